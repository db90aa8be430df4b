//go:build !race

// The race detector makes compressing tens of MiB twenty times slower,
// and this test is about memory, not about concurrency.

package forwarders

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"runtime"
	"testing"

	"github.com/spillwayhq/spillway/spool"
)

func TestArchiveObjectIsBuiltInItsScratchFileNotInMemory(t *testing.T) {
	// Incompressible events: an object held in memory would take as much
	// as its events.
	const objectBytes = 24 << 20
	sp := openSpool(t, t.TempDir(), "archive")
	sink := &fileSink{open: sp.ScratchFile}
	defer sink.close()
	o := objectBuilder{sink: sink}
	random := make([]byte, 12<<10)
	data := make([]byte, 0, 20<<10)
	live := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := live()
	for seq := uint64(0); o.raw < objectBytes; seq++ {
		_, _ = rand.Read(random)
		data = append(append(append(data[:0], `{"type":"track","blob":"`...), base64.StdEncoding.EncodeToString(random)...), `"}`...)
		if err := o.add(spool.Record{Seq: seq, Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	body, size, err := o.finish()
	if err != nil {
		t.Fatal(err)
	}
	if grown := int64(live()) - int64(before); grown > 4<<20 {
		t.Errorf("the live heap grew by %d KiB while building an object of %d MiB of events", grown>>10, objectBytes>>20)
	}
	if size < objectBytes/2 {
		t.Fatalf("object of %d bytes, want incompressible events", size)
	}
	if f, ok := body.(*os.File); !ok || f != sink.f {
		t.Errorf("object read back from %T, not its scratch file", body)
	}
}
