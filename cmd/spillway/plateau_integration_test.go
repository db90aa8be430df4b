//go:build integration

package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
)

// TestIntegrationSpoolSizePlateausAndFallsBackAfterABacklog runs minutes of
// steady load against a healthy destination and checks that the spool's
// size on disk stops growing; then lets a backlog build while the
// destination is down, and checks that once it has drained the size falls
// back near its floor within about a minute.
func TestIntegrationSpoolSizePlateausAndFallsBackAfterABacklog(t *testing.T) {
	// Beside the power-cut tests in scripts/test: this one mostly waits.
	t.Parallel()
	steady := 150 * time.Second
	hook := newSink(t)
	dir := t.TempDir()
	p := startSpillway(t, "", nil, "--spool-dir", dir, "--destination", "hook="+hook.URL, "--backoff-max", "2s")

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	sent := 0
	// About 20k events/s from 4 senders: steady, far below capacity.
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 10 * time.Second}
			defer client.CloseIdleConnections()
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if code, err := postBatch(ctx, client, p.url(), "wk", trackEvents(fmt.Sprintf("p%d-%d", w, i), 100)); err == nil && code == 200 {
					mu.Lock()
					sent += 100
					mu.Unlock()
				}
			}
		}()
	}

	type sample struct {
		at   time.Duration
		size int64
	}
	var curve []sample
	start := time.Now()
	measure := func(phase string) int64 {
		s := spool.DiskUsage(dir)
		curve = append(curve, sample{time.Since(start), s})
		t.Logf("%-9s t=%4.0fs spool %6.1f MiB", phase, time.Since(start).Seconds(), float64(s)/(1<<20))
		return s
	}
	var firstHalf, secondHalf int64
	for time.Since(start) < steady {
		time.Sleep(5 * time.Second)
		s := measure("steady")
		if time.Since(start) < steady/2 {
			firstHalf = max(firstHalf, s)
		} else {
			secondHalf = max(secondHalf, s)
		}
	}
	// Generations rotate every minute or 16 MiB: the steady state holds a
	// few of them. Growing would show as the second half well above the first.
	if secondHalf > firstHalf*5/4+16<<20 {
		t.Errorf("spool still growing under steady load: peak %d MiB in the first half, %d MiB in the second",
			firstHalf>>20, secondHalf>>20)
	}
	floor := secondHalf

	hook.setStatus(503)
	for i := 0; i < 4; i++ {
		time.Sleep(5 * time.Second)
		measure("backlog")
	}
	hook.setStatus(200)
	cancel()
	wg.Wait()
	mu.Lock()
	total := sent
	mu.Unlock()
	// Minutes of backlog take minutes to drain.
	defer func(p time.Duration) { testkit.Patience = p }(testkit.Patience)
	testkit.Patience = max(testkit.Patience, 3*time.Minute)
	testkit.Eventually(t, func() bool { u, _ := hook.Counts(); return u >= total }, "the backlog to drain")
	drained := time.Now()
	var after int64
	for time.Since(drained) < 90*time.Second {
		time.Sleep(5 * time.Second)
		if after = measure("drained"); after <= floor {
			break
		}
	}
	t.Logf("floor under steady load %.1f MiB; %.1f MiB %v after the backlog drained",
		float64(floor)/(1<<20), float64(after)/(1<<20), time.Since(drained).Round(time.Second))
	if after > floor {
		t.Errorf("spool at %d MiB 90 s after draining, above its steady-state peak of %d MiB", after>>20, floor>>20)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d", code)
	}
}
