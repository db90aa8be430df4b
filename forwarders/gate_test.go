package forwarders

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestJitterStaysWithinBounds(t *testing.T) {
	lo, hi := 100*time.Millisecond, 2*time.Second
	tests := []struct {
		scenario string
		fails    int
		after    time.Duration
		min, max time.Duration
	}{
		{"the first retry waits between min and twice min", 1, 0, lo, 2 * lo},
		{"the third waits up to eight times min", 3, 0, lo, 8 * lo},
		{"many failures are capped at max", 40, 0, lo, hi},
		{"a huge failure count does not overflow", 1000, 0, lo, hi},
		{"Retry-After is a floor", 1, time.Second, time.Second, time.Second},
		{"Retry-After is capped at max", 1, time.Hour, hi, hi},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			for range 200 {
				d := jitter(lo, hi, tt.fails, tt.after)
				if d < tt.min || d > tt.max {
					t.Fatalf("jitter = %v, want within [%v, %v]", d, tt.min, tt.max)
				}
			}
		})
	}
}

func TestGateLetsOneProbeAtATimeWhileFailing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGate(20*time.Millisecond, 20*time.Millisecond)
		ctx := t.Context()
		if probe, err := g.acquire(ctx, time.Time{}, time.Time{}); probe || err != nil {
			t.Fatalf("an up gate should let everyone through, got probe=%v err=%v", probe, err)
		}
		if tr, changed := g.failure(false, errors.New("boom"), false, 0); !changed || tr.to != StateFailing {
			t.Fatalf("first failure: %+v %v", tr, changed)
		}

		// Every probe fails, so the gate stays shut: one send at a time,
		// each a backoff (20ms) after the last failed.
		start := time.Now()
		var inside, most, probes atomic.Int32
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				probe, err := g.acquire(ctx, time.Time{}, time.Time{})
				if err != nil {
					t.Error(err)
					return
				}
				n := inside.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(5 * time.Millisecond)
				inside.Add(-1)
				if probe {
					probes.Add(1)
				}
				g.failure(probe, errors.New("still down"), false, 0)
			})
		}
		wg.Wait()
		if most.Load() != 1 || probes.Load() != 4 {
			t.Errorf("%d sends at once, %d of 4 as probes, while failing; want 1 at a time, all probes", most.Load(), probes.Load())
		}
		if took := time.Since(start); took != 4*(20+5)*time.Millisecond {
			t.Errorf("4 probes took %v, want 4 times the backoff and the send (100ms)", took)
		}

		// The first success opens the gate for everyone.
		probe, err := g.acquire(ctx, time.Time{}, time.Time{})
		if err != nil || !probe {
			t.Fatalf("probe=%v err=%v", probe, err)
		}
		if tr, changed := g.success(true); !changed || tr.from != StateFailing || tr.fails != 5 {
			t.Errorf("recovery: %+v %v", tr, changed)
		}
		if probe, err := g.acquire(ctx, time.Time{}, time.Time{}); probe || err != nil || g.current() != StateUp {
			t.Errorf("after recovery: probe=%v err=%v state=%s", probe, err, g.current())
		}
	})
}

func TestGateWaitEndsWhenAnEventIsDueToExpire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGate(time.Hour, time.Hour)
		g.failure(false, errors.New("down"), false, 0)
		start := time.Now()
		_, err := g.acquire(t.Context(), time.Time{}, start.Add(20*time.Millisecond))
		if !errors.Is(err, errExpiryDue) {
			t.Fatalf("err = %v, want errExpiryDue", err)
		}
		if waited := time.Since(start); waited != 20*time.Millisecond {
			t.Errorf("waited %v, want until the expiry (20ms)", waited)
		}
	})
}
