//go:build !race

// The race detector makes compressing and hashing 24 MB twenty times
// slower, and this test is about the bytes, not about concurrency.

package forwarders

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"testing"
	"time"
)

func TestArchiveOfALargeObjectUploadsItInPartsIntact(t *testing.T) {
	// Random content barely compresses: 24 MB of it in base64 makes an object past
	// the client's 16 MiB part size, sent as a multipart upload, whose
	// parts a store keeping aws-chunked framing would corrupt.
	s := startStore(t)
	sp := openSpool(t, t.TempDir(), "archive")
	random := make([]byte, 15<<10)
	var evs []ev
	for i := range 1200 {
		_, _ = rand.Read(random)
		evs = append(evs, ev{id: fmt.Sprintf("big-%04d", i), key: "wk-1", extra: `,"blob":"` + base64.StdEncoding.EncodeToString(random) + `"`})
	}
	for i := 0; i < len(evs); i += 50 {
		appendEvents(t, sp, evs[i:i+50]...)
	}
	g := startGroup(t, sp, nil, archiveSpec(s, "flush=1h"))
	if err := shutdown(t, g, time.Minute); err != nil {
		t.Fatal(err)
	}
	keys := s.Keys(t, "raw/")
	if len(keys) != 1 {
		t.Fatalf("objects %v, want one", keys)
	}
	if n := len(s.Object(t, keys[0])); n < 16<<20 {
		t.Fatalf("object of %d bytes, want one past the 16 MiB part size", n)
	}
	if n := s.Puts(); n < 2 {
		t.Errorf("%d PUT requests: not a multipart upload", n)
	}
	checkOnce(t, lineIDsOf(t, s), evs)
}
