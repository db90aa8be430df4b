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

	"github.com/spillwayhq/spillway/internal/powercut"
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
	t.Parallel()
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
		wg := doubleSender(ctx, p.url(), fmt.Sprintf("c%d", cycle), &mu, &attempted, acked)
		time.Sleep(time.Duration(100+rng.IntN(500)) * time.Millisecond)
		p.kill()
		cancel()
		wg.Wait()
	}

	p := startSpillway(t, "", nil, args...)
	checkIndexAgainstEvents(t, p, hook, attempted, acked)
	t.Logf("%d kills: %d batches attempted, %d events acknowledged", cycles, len(attempted), len(acked))
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}
}

// doubleSender posts batches of 20 events, each twice, from 4 clients
// until ctx ends, recording every batch attempted and every event
// acknowledged.
func doubleSender(ctx context.Context, url, tag string, mu *sync.Mutex, attempted *[][]map[string]any, acked map[string]bool) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			client := &http.Client{Timeout: 5 * time.Second}
			defer client.CloseIdleConnections()
			for i := 0; ctx.Err() == nil; i++ {
				evs := trackEvents(fmt.Sprintf("%s-w%d-%d", tag, w, i), 20)
				mu.Lock()
				*attempted = append(*attempted, evs)
				mu.Unlock()
				for range 2 {
					code, err := postBatch(ctx, client, url, "wk", evs)
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
	return &wg
}

// checkIndexAgainstEvents sends every attempted event again to p, which
// started on what the crashes left: each acknowledged event must be
// skipped (its index entry survived), and every attempted event must then
// be at the sink (no entry survived for an event that was not stored,
// which would have it skipped forever).
func checkIndexAgainstEvents(t *testing.T, p *process, hook *sink, attempted [][]map[string]any, acked map[string]bool) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	before := metricValue(t, p, deduplicatedHTTP)
	var rest [][]map[string]any
	all := map[string]bool{}
	for _, evs := range attempted {
		var a, r []map[string]any
		for _, e := range evs {
			id := e["messageId"].(string)
			all[id] = true
			if acked[id] {
				a = append(a, e)
			} else {
				r = append(r, e)
			}
		}
		if len(a) > 0 {
			if code, err := postBatch(t.Context(), client, p.url(), "wk", a); err != nil || code != 200 {
				t.Fatalf("post: %d, %v", code, err)
			}
		}
		if len(r) > 0 {
			rest = append(rest, r)
		}
	}
	if got := metricValue(t, p, deduplicatedHTTP) - before; got != float64(len(acked)) {
		t.Fatalf("sending the %d acknowledged events again skipped %v: an acknowledged event lost its index entry", len(acked), got)
	}
	for _, evs := range rest {
		if code, err := postBatch(t.Context(), client, p.url(), "wk", evs); err != nil || code != 200 {
			t.Fatalf("post: %d, %v", code, err)
		}
	}
	var mu sync.Mutex
	waitForAll(t, "at the sink (an event skipped for an entry without its event never arrives)", &mu, all, hook.Has)
}

// TestPowerCutsKeepTheIndexConsistentWithTheEvents is the test above with
// power cuts (internal/powercut) instead of kill -9: what was not fsynced
// is lost, and still no acknowledged event lacks its entry and no entry
// outlives its event.
func TestPowerCutsKeepTheIndexConsistentWithTheEvents(t *testing.T) {
	t.Parallel()
	cuts := 4
	if testing.Short() {
		cuts = 2
	}
	r := newPowerRig(t, crashSeed(t))
	var mu sync.Mutex
	acked := map[string]bool{}
	var attempted [][]map[string]any
	for cycle := range cuts {
		mode := powercut.Clean
		if r.rng.IntN(2) == 0 {
			mode = powercut.Harsh
		}
		p := r.start()
		ctx, cancel := context.WithCancel(t.Context())
		wg := doubleSender(ctx, p.url(), fmt.Sprintf("p%d", cycle), &mu, &attempted, acked)
		time.Sleep(time.Duration(200+r.rng.IntN(600)) * time.Millisecond)
		st := r.cut(p, mode)
		cancel()
		wg.Wait()
		t.Logf("cycle %d: %v cut, dropped %d unsynced bytes, %d directory operations, %d torn writes",
			cycle, modeName(mode), st.BytesDropped, st.DirOpsDropped, st.TornWrites)
	}
	p := r.start()
	checkIndexAgainstEvents(t, p, r.hook, attempted, acked)
	t.Logf("%d cuts: %d batches attempted, %d events acknowledged", cuts, len(attempted), len(acked))
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}
}
