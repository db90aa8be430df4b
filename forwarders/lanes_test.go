package forwarders

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
)

// Write keys of the lane tests; MaskWriteKey tells them apart by their
// first four characters.
const (
	keyA = "akey-misconfigured" // answered 401
	keyB = "bkey-throttled"     // answered 429
	keyC = "ckey-fine"
	keyD = "dkey-fine"
)

// laneSink is a Segment-compatible API on synctest's in-memory network:
// real HTTP, on the bubble's clock. It answers each request by its write
// key and records, per key, what it delivered and when.
type laneSink struct {
	latency time.Duration // per request, on the bubble's clock
	// slots, when not nil, bounds the requests served at once: a
	// destination whose capacity the keys share.
	slots chan struct{}

	mu        sync.Mutex
	status    map[string]int // by write key; absent means 200
	delivered map[string][]laneDelivery
	requests  map[string]int // by write key
}

type laneDelivery struct {
	id string
	at time.Time
}

func newLaneSink(latency time.Duration, status map[string]int) *laneSink {
	return &laneSink{latency: latency, status: status, delivered: map[string][]laneDelivery{}, requests: map[string]int{}}
}

func (s *laneSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key, _, _ := r.BasicAuth()
	body, err := readGzip(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	events, _, err := testkit.DecodeEvents(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if s.slots != nil {
		s.slots <- struct{}{}
		defer func() { <-s.slots }()
	}
	time.Sleep(s.latency)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests[key]++
	if code := s.status[key]; code != 0 {
		if code == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		w.WriteHeader(code)
		return
	}
	now := time.Now()
	for _, e := range events {
		s.delivered[key] = append(s.delivered[key], laneDelivery{id: testkit.MessageID(e), at: now})
	}
}

func readGzip(r *http.Request) ([]byte, error) {
	if r.Header.Get("Content-Encoding") != "gzip" {
		return io.ReadAll(r.Body)
	}
	zr, err := gzip.NewReader(r.Body)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}

func (s *laneSink) answerAll() {
	s.mu.Lock()
	s.status = nil
	s.mu.Unlock()
}

// count is how many events of key were delivered in [from, to), copies
// included.
func (s *laneSink) count(key string, from, to time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, d := range s.delivered[key] {
		if !d.at.Before(from) && d.at.Before(to) {
			n++
		}
	}
	return n
}

// firstOrder is key's messageIds in the order of their first delivery.
func (s *laneSink) firstOrder(key string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	seen := map[string]bool{}
	for _, d := range s.delivered[key] {
		if !seen[d.id] {
			seen[d.id] = true
			out = append(out, d.id)
		}
	}
	return out
}

// serveLaneSink serves s on a virtual network until the test ends and
// returns a segment destination's forwarder that dials it.
func serveLaneSink(t *testing.T, s *laneSink, spec string) (Destination, Forwarder) {
	t.Helper()
	var vn kfake.VirtualNetwork
	ln, err := vn.Listen("tcp", "127.0.0.1:18080")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	d := parse(t, "dest=segment+http://127.0.0.1:18080?"+spec)
	f, err := newForwarder(d)
	if err != nil {
		t.Fatal(err)
	}
	f.(*segmentForwarder).client.Transport.(*http.Transport).DialContext = vn.DialContext
	return d, f
}

// laneEventID names the n-th event of key.
func laneEventID(key string, n int) string { return fmt.Sprintf("%s-%05d", key[:4], n) }

// produce appends one event per key every tick, rounds times, on the
// bubble's clock.
func produce(t *testing.T, sp *memStore, keys []string, rounds int, tick time.Duration) {
	for i := range rounds {
		evs := make([]spool.Event, len(keys))
		for j, k := range keys {
			evs[j] = spool.Event{WriteKey: k, Data: ev{id: laneEventID(k, i), key: k}.json()}
		}
		if err := sp.Append(context.Background(), evs, nil); err != nil {
			t.Error(err)
			return
		}
		time.Sleep(tick)
	}
}

// laneOpts: batches of 20, two in flight.
const laneOpts = "batch_events=20&flush=5ms&concurrency=2&timeout=10s&backoff_min=10ms&backoff_max=200ms"

// laneRates runs keys at 1 000 events/s each for two seconds against a
// sink serving one request at a time in 2ms, answering the keys of status
// so, and returns the rate of each key
// delivered within them, past the first 200 ms; then it lets every key
// through and checks that everything arrives, in order per key.
func laneRates(t *testing.T, keys []string, status map[string]int) map[string]float64 {
	rates := map[string]float64{}
	synctest.Test(t, func(t *testing.T) {
		sink := newLaneSink(2*time.Millisecond, status)
		sink.slots = make(chan struct{}, 1) // the keys share the destination's capacity
		d, f := serveLaneSink(t, sink, laneOpts)
		sp := newMemStore("dest")
		g := startDests(t, sp, nil, []Destination{d}, []Forwarder{f})
		const rounds, tick = 2000, time.Millisecond
		start := time.Now()
		done := make(chan struct{})
		go func() {
			produce(t, sp, keys, rounds, tick)
			close(done)
		}()
		<-done
		end := time.Now()
		from := start.Add(200 * time.Millisecond)
		for _, k := range keys {
			rates[k] = float64(sink.count(k, from, end)) / end.Sub(from).Seconds()
		}
		if len(status) > 0 {
			st := g.Status()[0]
			if st.LanesNotUp != len(status) {
				t.Errorf("%d lanes not up, want %d: %+v", st.LanesNotUp, len(status), st.Lanes)
			}
		}

		sink.answerAll()
		for time.Since(end) < 10*time.Minute && sp.parkedCount()+int(sp.Backlog("dest").Events) > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		for _, k := range keys {
			want := make([]string, rounds)
			for i := range want {
				want[i] = laneEventID(k, i)
			}
			if got := sink.firstOrder(k); !slices.Equal(got, want) {
				t.Errorf("key %s: %d events delivered, want %d in order; first ones %v", k[:4], len(got), rounds, got[:min(len(got), 10)])
			}
		}
		if st := g.Status()[0]; len(st.Lanes) != 0 || st.State != StateUp {
			t.Errorf("lanes left after recovery: %+v", st)
		}
		if err := shutdown(t, g, time.Minute); err != nil {
			t.Error(err)
		}
	})
	return rates
}

// The scenario: 401 for key A and 429 for key B while C and D
// succeed. C and D keep at least 0.9 of the rate they have alone, A and B
// arrive once their keys recover, each key in order.
func TestLanesKeepOtherKeysAtTheirRateWhileTwoKeysFail(t *testing.T) {
	alone := laneRates(t, []string{keyC, keyD}, nil)
	mixed := laneRates(t, []string{keyA, keyB, keyC, keyD}, map[string]int{keyA: 401, keyB: 429})
	for _, k := range []string{keyC, keyD} {
		ratio := mixed[k] / alone[k]
		t.Logf("key %s: %.0f events/s alone, %.0f with A refused and B throttled: ratio %.3f", k[:4], alone[k], mixed[k], ratio)
		if ratio < 0.9 {
			t.Errorf("key %s delivered at %.3f of its rate alone, want at least 0.9", k[:4], ratio)
		}
	}
	if mixed[keyA] != 0 || mixed[keyB] != 0 {
		t.Errorf("refused keys delivered while refused: A %.0f/s, B %.0f/s", mixed[keyA], mixed[keyB])
	}
}

// A key with a large parked backlog drains in its lane, round-robin with
// the others, while a key that trickles keeps the rate it has alone in the
// main stream.
func TestLaneBacklogDoesNotStarveATrickle(t *testing.T) {
	alone, _ := trickleBesideBacklog(t, 0)
	beside, drain := trickleBesideBacklog(t, 5000)
	t.Logf("C trickles in at 1000/s: delivered at %.0f/s alone, %.0f/s while A drains a backlog of 5000 at %.0f/s: ratio %.3f",
		alone, beside, drain, beside/alone)
	if beside < 0.9*alone {
		t.Errorf("the trickle was delivered at %.3f of its rate alone while A drained, want at least 0.9", beside/alone)
	}
}

// trickleBesideBacklog parks backlog events of key A while its key fails,
// lets it recover, and sends key C at 1 000 events/s for a second to a
// sink that serves one request at a time, in 2ms: it returns C's delivered
// rate then, and A's while its lane drained.
func trickleBesideBacklog(t *testing.T, backlog int) (cRate, aRate float64) {
	synctest.Test(t, func(t *testing.T) {
		sink := newLaneSink(2*time.Millisecond, map[string]int{keyA: 503})
		sink.slots = make(chan struct{}, 1)
		d, f := serveLaneSink(t, sink, laneOpts)
		sp := newMemStore("dest")
		g := startDests(t, sp, nil, []Destination{d}, []Forwarder{f})
		produce(t, sp, []string{keyA}, backlog, 0)
		for sp.parkedCount() < backlog {
			time.Sleep(10 * time.Millisecond)
		}
		sink.answerAll()
		start := time.Now()
		produce(t, sp, []string{keyC}, 1000, time.Millisecond)
		end := time.Now()
		for sp.parkedCount() > 0 || sp.Backlog("dest").Events > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		drained := time.Now()
		cRate = float64(sink.count(keyC, start, end)) / end.Sub(start).Seconds()
		aRate = float64(sink.count(keyA, start, drained)) / drained.Sub(start).Seconds()
		if n := len(sink.firstOrder(keyA)); n != backlog {
			t.Errorf("%d of A's %d events delivered", n, backlog)
		}
		if err := shutdown(t, g, time.Minute); err != nil {
			t.Error(err)
		}
	})
	return cRate, aRate
}

// Thousands of failing keys hold a small struct each in memory, never
// their events: what the drainer holds at once is bounded by concurrency
// times batch_events.
func TestLanesHoldBoundedMemoryWithThousandsOfKeys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const keys, perKey = 2000, 2
		status := map[string]int{}
		var all []string
		for i := range keys {
			k := fmt.Sprintf("k%05d-key", i)
			all = append(all, k)
			status[k] = http.StatusServiceUnavailable
		}
		sink := newLaneSink(0, status)
		d, f := serveLaneSink(t, sink, opts(laneOpts, "backoff_min=5s&backoff_max=10s"))
		sp := newMemStore("dest")
		g := startDests(t, sp, nil, []Destination{d}, []Forwarder{f})
		produce(t, sp, all, perKey, 0)
		for sp.parkedCount() < keys*perKey || sp.Backlog("dest").Events > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		dp := g.ds[0]
		if n := dp.lanes.count.Load(); n != keys {
			t.Errorf("%d lanes, want %d", n, keys)
		}
		// Recovery before the first probe: each key is tried once more.
		time.Sleep(time.Second)
		sink.answerAll()
		for sp.parkedCount() > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(time.Second)
		if n := dp.lanes.count.Load(); n != 0 {
			t.Errorf("%d lanes left after every key recovered", n)
		}
		if peak, bound := dp.lanes.peakHeld.Load(), int64(d.Concurrency*d.BatchEvents); peak > bound || peak == 0 {
			t.Errorf("the drainer held %d parked events at once, want 1 to %d (concurrency × batch_events)", peak, bound)
		}
		for _, k := range all {
			if n := len(sink.firstOrder(k)); n != perKey {
				t.Fatalf("key %s: %d of %d events delivered", k, n, perKey)
			}
		}
		if err := shutdown(t, g, time.Minute); err != nil {
			t.Error(err)
		}
	})
}

// On a real spool and a loopback sink: while A is refused and B
// throttled, C and D are all delivered and the main cursor passes A's and
// B's events, which wait in the spool's lane log; status and metrics show
// the two lanes. The spool is closed and reopened, the keys recover, and
// every event arrives, in order per key, none dead-lettered.
func TestLanesParkDurablyAcrossARestart(t *testing.T) {
	var fixed atomic.Bool
	sink := testkit.NewSink(t, func(_ int, r *testkit.Request) testkit.Answer {
		switch {
		case fixed.Load():
			return testkit.Answer{}
		case r.User == keyA:
			return testkit.Answer{Status: 401, Body: `{"message":"invalid write key"}`}
		case r.User == keyB:
			return testkit.Answer{Status: 429}
		}
		return testkit.Answer{}
	})
	keys := []string{keyA, keyB, keyC, keyD}
	const perKey = 40
	dir := t.TempDir()
	sp := openSpool(t, dir, "dest")
	for i := range perKey {
		var evs []ev
		for _, k := range keys {
			evs = append(evs, ev{id: laneEventID(k, i), key: k})
		}
		appendEvents(t, sp, evs...)
	}
	spec := "dest=segment+" + sink.URL + "?" + opts(testOpts, "backoff_max=100ms")
	reg := prometheus.NewRegistry()
	g := startGroup(t, sp, reg, spec)
	testkit.Eventually(t, func() bool {
		return countPrefix(sink.Delivered(), "ckey") == perKey && countPrefix(sink.Delivered(), "dkey") == perKey &&
			sp.Backlog("dest").Events == 0
	}, "C and D not all delivered, or the main cursor held back: %v", backlog(sp, "dest"))
	if n := countPrefix(sink.Delivered(), "akey") + countPrefix(sink.Delivered(), "bkey"); n != 0 {
		t.Fatalf("%d events of refused keys delivered", n)
	}
	st := g.Status()[0]
	states := map[string]State{}
	for _, l := range st.Lanes {
		states[l.WriteKey] = l.State
		if l.BacklogEvents != perKey || l.LastError == "" {
			t.Errorf("lane %+v: want %d events and its last error", l, perKey)
		}
	}
	if st.LanesNotUp != 2 || states["akey…"] != StateMisconfigured || states["bkey…"] != StateFailing ||
		st.BacklogEvents != 2*perKey || st.State != StateUp {
		t.Errorf("status %+v", st)
	}
	for state, want := range map[State]float64{StateMisconfigured: 1, StateFailing: 1, StateUp: 0} {
		if n := metric(t, reg, "spillway_destination_lanes", "state", string(state)); n != want {
			t.Errorf("spillway_destination_lanes{state=%q} = %v, want %v", state, n, want)
		}
	}
	if n := metric(t, reg, "spillway_destination_parked_events", "destination", "dest"); n != 2*perKey {
		t.Errorf("spillway_destination_parked_events = %v, want %d", n, 2*perKey)
	}
	for _, k := range keys {
		if strings.Contains(fmt.Sprintf("%+v", st), k) {
			t.Errorf("write key %s shows in status: %+v", k, st)
		}
	}

	if err := shutdown(t, g, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := sp.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	sp = openSpool(t, dir, "dest")
	parked, err := sp.Lanes("dest")
	if err != nil || len(parked) != 2 || parked[0].Events != perKey || parked[1].Events != perKey {
		t.Fatalf("lanes after reopening: %+v, %v", parked, err)
	}
	fixed.Store(true)
	g = startGroup(t, sp, nil, spec)
	testkit.Eventually(t, func() bool { return len(sink.Delivered()) == len(keys)*perKey },
		"not every event delivered after the restart: %d", func() any { return len(sink.Delivered()) })
	// The lanes' events are in order; the others went in batches two at a
	// time, as without lanes.
	for _, k := range []string{keyA, keyB} {
		var got []string
		seen := map[string]bool{}
		for _, id := range sink.Order() {
			if strings.HasPrefix(id, k[:4]) && !seen[id] {
				seen[id] = true
				got = append(got, id)
			}
		}
		if !slices.IsSorted(got) {
			t.Errorf("key %s out of order: %v", k[:4], got)
		}
	}
	testkit.Eventually(t, func() bool {
		p, err := sp.Lanes("dest")
		return err == nil && len(p) == 0 && len(g.Status()[0].Lanes) == 0
	}, "lanes left after every key recovered")
	if dls := deadLetters(t, sp, ""); len(dls) != 0 {
		t.Errorf("%d dead letters, want none", len(dls))
	}
}

func countPrefix(ids []string, prefix string) int {
	n := 0
	for _, id := range ids {
		if strings.HasPrefix(id, prefix) {
			n++
		}
	}
	return n
}

// A webhook with lanes=write_key sends one request per key, so that the
// endpoint's refusal of one key's events parks those alone.
func TestWebhookLanesSendOneRequestPerKey(t *testing.T) {
	var fixed atomic.Bool
	sink := testkit.NewSink(t, func(_ int, r *testkit.Request) testkit.Answer {
		for _, id := range r.IDs {
			if strings.HasPrefix(id, "akey") && !fixed.Load() {
				return testkit.Answer{Status: 403}
			}
		}
		return testkit.Answer{}
	})
	sp := newMemStore("dest")
	const perKey = 20
	for i := range perKey {
		appendEvents(t, sp, ev{id: laneEventID(keyA, i), key: keyA}, ev{id: laneEventID(keyC, i), key: keyC})
	}
	g := startGroup(t, sp, nil, "dest="+sink.URL+"?"+opts(testOpts, "lanes=write_key&backoff_max=100ms"))
	testkit.Eventually(t, func() bool {
		return countPrefix(sink.Delivered(), "ckey") == perKey && sp.parkedCount() == perKey
	}, "C not delivered, or A not parked")
	for _, r := range sink.Requests() {
		keys := map[string]bool{}
		for _, id := range r.IDs {
			keys[id[:4]] = true
		}
		if len(keys) != 1 {
			t.Errorf("a request with the events of %d keys: %v", len(keys), r.IDs)
		}
	}
	if st := g.Status()[0]; st.LanesNotUp != 1 || st.Lanes[0].State != StateMisconfigured {
		t.Errorf("status %+v", st)
	}
	fixed.Store(true)
	testkit.Eventually(t, func() bool { return len(sink.Delivered()) == 2*perKey }, "A not delivered after the fix")
}
