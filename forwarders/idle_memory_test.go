//go:build !race

// About memory, which the race detector's own allocations would blur.

package forwarders

import (
	"runtime"
	"testing"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// A destination caught up for idleMemoryAfter keeps none of the memory
// its batches were built in: not its finished batches', not the batch it
// builds next, not what its last read's records point to.
func TestACaughtUpDestinationLetsGoOfItsBatchesMemory(t *testing.T) {
	liveHeap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	const batchBytes = 8 << 20 // each batch's memory is made this large
	before := liveHeap()
	s := testkit.NewSink(t, nil)
	sp := newMemStore("dest")
	startGroup(t, sp, nil, "dest="+s.URL+"?batch_events=5&flush=5ms&batch_bytes=8388608")
	appendEvents(t, sp, numbered(40)...)
	testkit.Eventually(t, func() bool { return deliveredCount(s) == 40 }, "not all delivered")
	testkit.Eventually(t, func() bool { return liveHeap() < before+batchBytes/4 },
		"live heap %d MiB over the start's, want under 2 MiB once caught up",
		func() any { return (int64(liveHeap()) - int64(before)) >> 20 })
	appendEvents(t, sp, numbered(45)[40:]...)
	testkit.Eventually(t, func() bool { return deliveredCount(s) == 45 }, "events after the release not delivered")
}
