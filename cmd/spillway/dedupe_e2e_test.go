package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spillwayhq/spillway/internal/testkit"
)

const deduplicatedHTTP = `spillway_events_deduplicated_total{source="http"}`

func TestTheSameBatchSentTwiceReachesTheSinkOnceAcrossARestart(t *testing.T) {
	hook := newSink(t)
	dir := t.TempDir()
	args := []string{"--spool-dir", dir, "--flush-interval", "20ms", "--destination", "hook=" + hook.URL}
	batch := trackEvents("twice", 50)
	send := func(p *process) {
		t.Helper()
		if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", batch); err != nil || code != 200 {
			t.Fatalf("post: %d, %v", code, err)
		}
	}

	p := startSpillway(t, "", nil, args...)
	send(p)
	send(p)
	if got := metricValue(t, p, deduplicatedHTTP); got != 50 {
		t.Fatalf("%s = %v, want 50", deduplicatedHTTP, got)
	}
	if got := metricValue(t, p, "spillway_dedupe_window_seconds"); got != 86400 {
		t.Fatalf("spillway_dedupe_window_seconds = %v, want 86400", got)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}

	p = startSpillway(t, "", nil, args...)
	send(p)
	if got := metricValue(t, p, deduplicatedHTTP); got != 50 {
		t.Fatalf("after a restart %s = %v, want 50", deduplicatedHTTP, got)
	}
	// A new event after the copies: once it is delivered, so would they be.
	if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", trackEvents("after", 1)); err != nil || code != 200 {
		t.Fatalf("post: %d, %v", code, err)
	}
	testkit.Eventually(t, func() bool { return hook.Has("after-0") }, "the last event delivered")
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}
	if unique, total := hook.Counts(); unique != 51 || total != 51 {
		t.Fatalf("the sink received %d events, %d distinct, want each of the 51 once", total, unique)
	}
}

// delayingProxy stands between an SDK and spillway. It forwards the first
// request at once, so that spillway stores its events, but holds that
// answer back until the SDK, having timed out, has sent the request again
// and had its answer: a 200 that comes after the SDK stopped waiting.
type delayingProxy struct {
	srv     *httptest.Server
	mu      sync.Mutex
	n       int
	retried chan struct{}
}

func newDelayingProxy(t *testing.T, target string) *delayingProxy {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	d := &delayingProxy{retried: make(chan struct{})}
	d.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		d.n++
		n := d.n
		d.mu.Unlock()
		if n > 1 {
			rp.ServeHTTP(w, r)
			if n == 2 {
				close(d.retried)
			}
			return
		}
		rec := httptest.NewRecorder()
		rp.ServeHTTP(rec, r)
		select {
		case <-d.retried:
		case <-t.Context().Done():
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = io.Copy(w, rec.Body)
	}))
	t.Cleanup(d.srv.Close)
	return d
}

func (d *delayingProxy) requests() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n
}

func TestAnalyticsNodeRetryingAfterALate200DeliversOneCopy(t *testing.T) {
	node, _ := findNodeSDK(t)
	hook := newSink(t)
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--flush-interval", "20ms", "--destination", "hook="+hook.URL)
	proxy := newDelayingProxy(t, p.url())

	r := startNodeSDK(t, node, proxy.srv.URL, "wk-node", "late", "SDK_HTTP_TIMEOUT_MS=300")
	if code := r.wait(t, 25*time.Second); code != 0 {
		t.Fatalf("send.mjs: exit status %d: %s", code, r.stderr.String())
	}
	sent := r.delivered(t)
	if len(sent) != 7 {
		t.Fatalf("the SDK reported %d events delivered, want 7", len(sent))
	}
	if proxy.requests() < 2 {
		t.Fatalf("the SDK sent %d requests: it did not retry", proxy.requests())
	}
	for id := range sent {
		testkit.Eventually(t, func() bool { return hook.Has(id) }, "%s delivered", id)
	}
	if got := metricValue(t, p, deduplicatedHTTP); got != 7 {
		t.Errorf("%s = %v, want the 7 events of the retried request", deduplicatedHTTP, got)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}
	if unique, total := hook.Counts(); unique != 7 || total != 7 {
		t.Fatalf("the sink received %d events, %d distinct, want each of the 7 once", total, unique)
	}
}

// TestKilledProcessKeepsTheIndexConsistentWithTheEvents kills spillway
// with SIGKILL at random moments while clients send every batch twice,
// then sends everything again: each acknowledged event must be skipped (its
// entry survived), and every event attempted must reach the sink (no entry
// survived for an event that was not stored, which would skip it forever).
func TestKilledProcessKeepsTheIndexConsistentWithTheEvents(t *testing.T) {
	cycles := 5
	if testing.Short() {
		cycles = 2
	}
	rng := rand.New(rand.NewPCG(crashSeed(t), 25))
	hook := newSink(t)
	dir := t.TempDir()
	args := []string{"--spool-dir", dir, "--flush-interval", "20ms", "--destination", "hook=" + hook.URL}

	var mu sync.Mutex
	acked := map[string]bool{}
	var attempted [][]map[string]any
	for cycle := range cycles {
		p := startSpillway(t, "", nil, args...)
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				client := &http.Client{Timeout: 5 * time.Second}
				defer client.CloseIdleConnections()
				for i := 0; ctx.Err() == nil; i++ {
					evs := trackEvents(fmt.Sprintf("c%d-w%d-%d", cycle, w, i), 20)
					mu.Lock()
					attempted = append(attempted, evs)
					mu.Unlock()
					for range 2 {
						code, err := postBatch(ctx, client, p.url(), "wk", evs)
						if err == nil && code == 200 {
							mu.Lock()
							for _, e := range evs {
								acked[e["messageId"].(string)] = true
							}
							mu.Unlock()
						}
					}
				}
			})
		}
		time.Sleep(time.Duration(100+rng.IntN(500)) * time.Millisecond)
		p.kill()
		cancel()
		wg.Wait()
	}

	p := startSpillway(t, "", nil, args...)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	var ackedAgain, rest [][]map[string]any
	for _, evs := range attempted {
		var a, r []map[string]any
		for _, e := range evs {
			if acked[e["messageId"].(string)] {
				a = append(a, e)
			} else {
				r = append(r, e)
			}
		}
		if len(a) > 0 {
			ackedAgain = append(ackedAgain, a)
		}
		if len(r) > 0 {
			rest = append(rest, r)
		}
	}
	for _, evs := range ackedAgain {
		if code, err := postBatch(t.Context(), client, p.url(), "wk", evs); err != nil || code != 200 {
			t.Fatalf("post: %d, %v", code, err)
		}
	}
	if got := metricValue(t, p, deduplicatedHTTP); got != float64(len(acked)) {
		t.Fatalf("sending the %d acknowledged events again skipped %v: an acknowledged event lost its index entry", len(acked), got)
	}
	all := map[string]bool{}
	for _, evs := range attempted {
		for _, e := range evs {
			all[e["messageId"].(string)] = true
		}
	}
	for _, evs := range rest {
		if code, err := postBatch(t.Context(), client, p.url(), "wk", evs); err != nil || code != 200 {
			t.Fatalf("post: %d, %v", code, err)
		}
	}
	t.Logf("%d kills: %d events attempted, %d acknowledged", cycles, len(all), len(acked))
	waitForAll(t, "at the sink (an event skipped for an entry without its event never arrives)", &mu, all, hook.Has)
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}
}
