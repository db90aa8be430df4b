//go:build !race

package proxy

import (
	"testing"

	"github.com/valyala/fasthttp"
)

// TestAllocationBudget keeps the hot path from growing per-event
// allocations: a request's cost must not depend on its number of events.
func TestAllocationBudget(t *testing.T) {
	for _, n := range []int{1, 100, 500} {
		s := benchServer(t)
		body := realisticBatch(n)
		ctx := batchRequest(t, body)
		h := s.Handler()
		h(ctx) // warm the pools
		ctx.Response.Reset()
		allocs := testing.AllocsPerRun(50, func() {
			ctx.Request.SetBody(body) // as the server reading the next request does
			h(ctx)
			if ctx.Response.StatusCode() != fasthttp.StatusOK {
				t.Fatalf("status %d", ctx.Response.StatusCode())
			}
			ctx.Response.Reset()
		})
		if allocs > 4 {
			t.Errorf("a batch of %d events costs %.0f allocations, budget 4", n, allocs)
		}
	}
}
