package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// relay is one relay spillway's settings: it consumes the topic in the
// group and delivers to the sink under a path naming the relay and its
// start, so that the sink tells each life of each relay apart.
type relay struct {
	dir, brokers, sinkURL string
	n, starts             int
	p                     *process
}

func (r *relay) start(t *testing.T) {
	t.Helper()
	r.starts++
	admin := freeAddr(t)
	r.p = startSpillway(t, admin, nil, "--listen", "", "--admin-listen", admin, "--spool-dir", r.dir,
		"--source", "kafka://"+r.brokers+"/events?group=relays&session_timeout=1s",
		// One batch in flight keeps each user's events in order.
		"--destination", fmt.Sprintf("hook=%s/relay%d-%d?concurrency=1&flush=20ms&batch_events=200", r.sinkURL, r.n, r.starts))
}

// TestRelaysInAGroupDeliverEveryAcknowledgedEventThroughAKill: three
// sidecars produce to a topic of six partitions; two relays in one
// consumer group deliver it to a sink. One relay is killed with SIGKILL
// mid-stream and started again later: every event a sidecar acknowledged
// arrives, each user's events in order through each life of each relay,
// and the duplicates the kill costs are counted.
func TestRelaysInAGroupDeliverEveryAcknowledgedEventThroughAKill(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(6, "events"), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := strings.Join(c.ListenAddrs(), ",")
	hook := newSink(t)

	var sidecars []*process
	for range 3 {
		sidecars = append(sidecars, startSpillway(t, "", nil, "--spool-dir", t.TempDir(),
			"--destination", "k=kafka://"+brokers+"/events?batch_events=200&flush=10ms&backoff_max=1s"))
	}
	relays := []*relay{{n: 0}, {n: 1}}
	for _, r := range relays {
		r.dir, r.brokers, r.sinkURL = t.TempDir(), brokers, hook.URL
		r.start(t)
	}
	if !strings.Contains(relays[0].p.stderr.String(), "listen=off") {
		t.Errorf("a relay with --listen '' reports a listener: %s", relays[0].p.stderr)
	}

	// Each writer owns its users and sends their events in order, one
	// batch at a time, to one sidecar, numbering each user's events.
	ctx, cancel := context.WithCancel(t.Context())
	var mu sync.Mutex
	acked := map[string]bool{}
	var wg sync.WaitGroup
	for w := range 6 {
		sidecar := sidecars[w%3]
		wg.Go(func() {
			client := &http.Client{Timeout: 5 * time.Second}
			defer client.CloseIdleConnections()
			seq := 0
			for b := 0; ctx.Err() == nil; b++ {
				evs := make([]map[string]any, 50)
				for i := range evs {
					seq++
					evs[i] = map[string]any{"type": "track", "event": "Relayed", "userId": fmt.Sprintf("w%d-u%d", w, i%5),
						"messageId": fmt.Sprintf("w%d-%d", w, seq), "properties": map[string]any{"seq": seq}}
				}
				if code, err := postBatch(ctx, client, sidecar.url(), fmt.Sprintf("wk-%d", w%2), evs); err != nil || code != 200 {
					continue // not acknowledged: an SDK would send it again
				}
				mu.Lock()
				for _, e := range evs {
					acked[e["messageId"].(string)] = true
				}
				mu.Unlock()
			}
		})
	}

	delivered := func() int { u, _ := hook.Counts(); return u }
	// Each relay takes events only once the group gave it partitions.
	deliveredBy := func(path string) int {
		n := 0
		for _, r := range hook.Requests() {
			if p, _, _ := strings.Cut(r.URI, "?"); r.Status == 200 && p == path {
				n += len(r.IDs)
			}
		}
		return n
	}
	testkit.Eventually(t, func() bool { return deliveredBy("/relay0-1") > 1000 && deliveredBy("/relay1-1") > 1000 }, "both relays delivering")
	time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
	killed := time.Now()
	relays[1].p.kill()
	info, err := c.WaitGroupInfo(ctx, "relays", func(g *kfake.GroupInfo) bool {
		return g.State == "Stable" && len(g.Members) == 1 && g.NumAssigned() == 6
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed relay's partitions taken over %v after the kill (session timeout 1s), generation %d", time.Since(killed), info.Epoch)

	before := delivered()
	testkit.Eventually(t, func() bool { return delivered() > before+2000 }, "one relay delivering alone")
	restarted := time.Now()
	relays[1].start(t)
	info, err = c.WaitGroupInfo(ctx, "relays", func(g *kfake.GroupInfo) bool {
		return g.State == "Stable" && len(g.Members) == 2 && g.Members[0].NumAssigned() == 3 && g.Members[1].NumAssigned() == 3
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restarted relay given its share %v after its start, generation %d", time.Since(restarted), info.Epoch)
	before = delivered()
	testkit.Eventually(t, func() bool { return deliveredBy("/relay1-2") > 1000 }, "the restarted relay delivering")
	cancel()
	wg.Wait()

	waitForAll(t, "at the sink through the relays", &mu, acked, hook.Has)
	unique, total := hook.Counts()
	t.Logf("%d acknowledged, %d delivered, %d duplicates", len(acked), unique, total-unique)
	checkOrderPerRelayLife(t, hook)

	for _, r := range relays {
		s := scrapeMetrics(t, r.p.url())
		if v, _ := s.value("spillway_source_records_total", "source", "events", "outcome", "stored"); v == 0 {
			t.Errorf("relay %d: spillway_source_records_total{outcome=stored} is 0", r.n)
		}
		if v, _ := s.value("spillway_source_rebalances_total", "source", "events", "change", "assigned"); v == 0 {
			t.Errorf("relay %d: no assignment counted", r.n)
		}
	}
	for _, p := range append(sidecars, relays[0].p, relays[1].p) {
		if code := p.stop(); code != 0 {
			t.Errorf("exit status %d: %s", code, p.stderr)
		}
	}
	for _, r := range relays {
		if !strings.Contains(r.p.stderr.String(), "stopped consuming") {
			t.Errorf("relay %d did not stop its source before closing: %s", r.n, r.p.stderr)
		}
	}
}

// checkOrderPerRelayLife checks that through each life of each relay (one
// sink path), each user's events came in the order they were sent, each
// new one after those before it: a partition is read in order by the one
// relay that owns it, into a spool delivered one batch at a time. Copies
// (an event read again after the kill) may come late; only first
// arrivals are held to the order.
func checkOrderPerRelayLife(t *testing.T, hook *sink) {
	t.Helper()
	type key struct{ path, user string }
	last := map[key]float64{}
	seen := map[string]map[string]bool{} // path -> messageIds
	lives := map[string]bool{}
	for _, r := range hook.Requests() {
		if r.Status != 200 {
			continue
		}
		path, _, _ := strings.Cut(r.URI, "?")
		lives[path] = true
		if seen[path] == nil {
			seen[path] = map[string]bool{}
		}
		for _, raw := range r.Events {
			var e struct {
				MessageID  string `json:"messageId"`
				UserID     string `json:"userId"`
				Properties struct{ Seq float64 }
			}
			if err := json.Unmarshal(raw, &e); err != nil {
				t.Fatal(err)
			}
			if seen[path][e.MessageID] {
				continue
			}
			seen[path][e.MessageID] = true
			k := key{path, e.UserID}
			if e.Properties.Seq <= last[k] {
				t.Errorf("%s: %s's event %v came after %v", path, e.UserID, e.Properties.Seq, last[k])
			}
			last[k] = e.Properties.Seq
		}
	}
	if len(lives) != 3 {
		t.Errorf("deliveries through %d relay lives, want 3 (two relays, one restarted): %v", len(lives), lives)
	}
}

func TestBadSourceFlagsExitTwoNamingTheFlag(t *testing.T) {
	cases := map[string]struct {
		args []string
		want string
	}{
		"no listener and no source":  {[]string{"--listen", ""}, "--listen ''"},
		"a source without a group":   {[]string{"--source", "kafka://127.0.0.1:9092/events"}, "--source: source events: a kafka source needs ?group="},
		"a source of another scheme": {[]string{"--source", "s=http://127.0.0.1/x?group=g"}, "--source: source s: unsupported scheme"},
		"a source password not set": {[]string{"--source", "kafka://127.0.0.1:9092/events?group=g&sasl=plain&user=u&password_env=SPILLWAY_TEST_UNSET"},
			"SPILLWAY_TEST_UNSET"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			var stderr strings.Builder
			code := run(t.Context(), append([]string{"run", "--spool-dir", t.TempDir()}, c.args...), io.Discard, &stderr)
			if code != 2 || !strings.Contains(stderr.String(), c.want) {
				t.Fatalf("exit %d, stderr %q; want 2 naming %s", code, stderr.String(), c.want)
			}
		})
	}
}
