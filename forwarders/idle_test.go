package forwarders

import (
	"testing"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// A destination that has caught up lets go of the memory its batches were
// built and sent in, so that the spool's hand-back of the heap to the
// system returns it: an idle sidecar is charged for its RSS.
func TestACaughtUpDestinationLetsGoOfItsRequestBodies(t *testing.T) {
	dropRequestBodies()
	s := testkit.NewSink(t, nil)
	sp := newMemStore("dest")
	startGroup(t, sp, nil, "dest="+s.URL+"?batch_events=5&flush=5ms")
	appendEvents(t, sp, numbered(20)...)
	testkit.Eventually(t, func() bool { return deliveredCount(s) == 20 }, "not all delivered")
	// Kept for the next batches while events come; let go within
	// idleMemoryAfter once none do.
	testkit.Eventually(t, func() bool { return len(requestBodies) == 0 },
		"%d request bodies kept by an idle destination", func() any { return len(requestBodies) })
	appendEvents(t, sp, numbered(25)[20:]...)
	testkit.Eventually(t, func() bool { return deliveredCount(s) == 25 }, "events after the release not delivered")
}
