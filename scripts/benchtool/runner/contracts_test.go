package main

import (
	"testing"

	"github.com/spillwayhq/spillway/internal/plan"
)

// TestPlan50IsAFiftyEventPlan: W1flag and W1block measure a plan of 50
// track events, every one of loadgen's events among them.
func TestPlan50IsAFiftyEventPlan(t *testing.T) {
	p, err := plan.Parse(plan50)
	if err != nil {
		t.Fatal(err)
	}
	events := map[string]bool{}
	for _, e := range p.Events() {
		events[e] = true
	}
	if len(events) != 50 {
		t.Errorf("the plan names %d events, want 50", len(events))
	}
	for _, e := range []string{"Product Viewed", "Order Completed", "Promotion Viewed"} {
		if !events[e] {
			t.Errorf("loadgen's %q is not planned", e)
		}
	}
}
