//go:build !race

package spool

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// TestValueLogPagesAreReleasedAsTheWriterCommits: the pages of what the
// writer committed to the generations' value logs stay resident, counted
// in the RSS, unless released; a release must leave every event readable.
// Not under the race detector, whose runtime keeps the pages resident.
func TestValueLogPagesAreReleasedAsTheWriterCommits(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	defer s.Close(context.Background())
	// Base64 of random bytes, which hardly compresses: 3.25 MiB of events,
	// about 3.6 MiB of log, all in the active generation, which stays open
	// and mapped.
	var want []string
	for range 13 {
		evs := make([]Event, 64)
		for i := range evs {
			raw := make([]byte, 3<<10)
			_, _ = rand.Read(raw)
			evs[i] = Event{WriteKey: "wk", Data: []byte(strconv.Quote(base64.StdEncoding.EncodeToString(raw)))}
			want = append(want, string(evs[i].Data))
		}
		if err := s.Append(t.Context(), evs, nil); err != nil {
			t.Fatalf("append: %v", err)
		}
	}
	if n := len(s.generationsFrom(0)); n != 1 {
		t.Fatalf("%d generations, want the events in one", n)
	}
	// What was committed since the last release, at most.
	const bound = releaseLogEveryBytes + maxBlockBytes
	testkit.Eventually(t, func() bool { return residentLogBytes(t, dir) <= bound },
		"value log resident %d bytes, want at most %d", func() any { return residentLogBytes(t, dir) }, bound)
	got := readAll(t, s, "a")
	if len(got) != len(want) {
		t.Fatalf("read %d events, want %d", len(got), len(want))
	}
	for i, r := range got {
		if string(r.Data) != want[i] {
			t.Fatalf("event %d changed after its pages were released", i)
		}
	}
}

// residentLogBytes sums the resident pages of the spool's value logs, as
// /proc/self/smaps counts them.
func residentLogBytes(t *testing.T, dir string) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skip("no /proc/self/smaps")
	}
	defer f.Close()
	abs, _ := filepath.Abs(dir)
	var total int64
	inLog := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		if fields := bytes.Fields(line); len(fields) >= 6 && bytes.Contains(fields[0], []byte{'-'}) {
			path := string(fields[5])
			inLog = strings.HasPrefix(path, abs+"/") && filepath.Ext(path) == ".vlog"
			continue
		}
		if inLog && bytes.HasPrefix(line, []byte("Rss:")) {
			var kb int64
			if _, err := fmt.Sscanf(string(line), "Rss: %d kB", &kb); err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
			total += kb << 10
		}
	}
	return total
}
