package forwarders

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
)

func TestBatchingLimits(t *testing.T) {
	evLen := len(numbered(1)[0].json())
	tests := []struct {
		scenario  string
		opts      string
		events    int
		wantSizes []int
		maxBody   int // bytes of a JSON array body; 0: no limit checked
	}{
		{"batch_events caps the events of a request", "batch_events=4", 13, []int{4, 4, 4, 1}, 0},
		{"batch_bytes caps the bytes of a request", fmt.Sprintf("batch_bytes=%d", 3*(evLen+1)+batchOverhead), 10,
			[]int{3, 3, 3, 1}, 3*(evLen+1) + batchOverhead},
		{"an event larger than batch_bytes goes alone", "batch_bytes=10", 3, []int{1, 1, 1}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			s := testkit.NewSink(t, nil)
			sp := openSpool(t, t.TempDir(), "dest")
			appendEvents(t, sp, numbered(tt.events)...)
			startGroup(t, sp, nil, "dest="+s.URL+"?"+opts("flush=20ms&concurrency=1", tt.opts))
			testkit.Eventually(t, func() bool { return deliveredCount(s) == tt.events }, "not all delivered")
			var sizes []int
			for _, r := range s.Requests() {
				sizes = append(sizes, len(r.IDs))
				if tt.maxBody > 0 && r.Bytes > tt.maxBody {
					t.Errorf("a body of %d bytes, over batch_bytes %d", r.Bytes, tt.maxBody)
				}
			}
			if !slices.Equal(sizes, tt.wantSizes) {
				t.Errorf("request sizes %v, want %v", sizes, tt.wantSizes)
			}
		})
	}

	t.Run("a partial batch waits for flush, then goes", func(t *testing.T) {
		s := testkit.NewSink(t, nil)
		sp := openSpool(t, t.TempDir(), "dest")
		startGroup(t, sp, nil, "dest="+s.URL+"?batch_events=100&flush=300ms")
		start := time.Now()
		appendEvents(t, sp, numbered(2)...)
		testkit.Eventually(t, func() bool { return deliveredCount(s) == 2 }, "not delivered")
		reqs := s.Requests()
		if len(reqs) != 1 || len(reqs[0].IDs) != 2 {
			t.Fatalf("requests %+v, want one of 2 events", reqs)
		}
		if wait := reqs[0].At.Sub(start); wait < 250*time.Millisecond || wait > 2*time.Second {
			t.Errorf("sent %v after the events came, want about the 300ms flush", wait)
		}
	})
}

func TestRestartResendsExactlyWhatWasNotAcknowledged(t *testing.T) {
	dir := t.TempDir()
	sp := openSpool(t, dir, "dest")
	evs := numbered(20)
	appendEvents(t, sp, evs...)

	// The second batch (m-005..m-009) hangs; the others succeed. Only the
	// first batch is a contiguous finished prefix.
	s := testkit.NewSink(t, func(_ int, r *testkit.Request) testkit.Answer {
		if slices.Contains(r.IDs, "m-005") {
			return testkit.Answer{Hang: true}
		}
		return testkit.Answer{}
	})
	g := startGroup(t, sp, nil, "dest="+s.URL+"?batch_events=5&flush=5ms&concurrency=4&timeout=1m")
	testkit.Eventually(t, func() bool { return deliveredCount(s) == 15 }, "batches 1, 3 and 4 not delivered")
	testkit.Eventually(t, func() bool { return sp.Backlog("dest").Events == 15 },
		"backlog %d, want 15: only the first batch may be acknowledged", backlog(sp, "dest"))

	err := shutdown(t, g, 200*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "drain dest") {
		t.Fatalf("Shutdown = %v, want a drain deadline naming dest", err)
	}
	if n := sp.Backlog("dest").Events; n != 15 {
		t.Fatalf("backlog %d after shutdown, want 15", n)
	}
	if err := sp.Close(t.Context()); err != nil {
		t.Fatal(err)
	}

	sp2 := openSpool(t, dir, "dest")
	s2 := testkit.NewSink(t, nil)
	startGroup(t, sp2, nil, "dest="+s2.URL+"?batch_events=5&flush=5ms")
	testkit.Eventually(t, func() bool { return sp2.Backlog("dest").Events == 0 }, "not drained after restart")
	if got, want := s2.Delivered(), ids(evs[5:]); !slices.Equal(got, want) {
		t.Errorf("after restart delivered %v, want exactly the unacknowledged %v", got, want)
	}
}

func TestMisconfiguredDestinationIsRetriedSlowlyAndNeverDeadLettered(t *testing.T) {
	var fixed atomic.Bool
	s := testkit.NewSink(t, func(int, *testkit.Request) testkit.Answer {
		if fixed.Load() {
			return testkit.Answer{}
		}
		return testkit.Answer{Status: 401, Body: `{"message":"invalid write key"}`}
	})
	sp := openSpool(t, t.TempDir(), "dest")
	reg := prometheus.NewRegistry()
	var logs testkit.Buffer
	log := logs.Logger(t)
	evs := numbered(10)
	for i := range evs {
		evs[i].key = "wk-secret"
	}
	appendEvents(t, sp, evs...)
	d, err := ParseDestination("dest=segment+"+s.URL+"?"+opts(testOpts, "backoff_max=100ms"), Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	g, err := newGroup([]Destination{d}, nil, sp, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	g.Start()
	defer shutdown(t, g, time.Second)

	testkit.Eventually(t, func() bool {
		return metric(t, reg, "spillway_forward_retries_total", "reason", "misconfigured") >= 3
	}, "no slow retries")
	st := g.Status()[0]
	if st.State != StateMisconfigured || !strings.Contains(st.LastError, "401") || st.BacklogEvents != 10 {
		t.Errorf("status %+v", st)
	}
	if up := metric(t, reg, "spillway_destination_up", "destination", "dest"); up != 0 {
		t.Errorf("up = %v while misconfigured", up)
	}
	// backoff_max apart: 3 retries cannot take less than about 200ms.
	reqs := s.Requests()
	for i := 2; i < len(reqs); i++ {
		if gap := reqs[i].At.Sub(reqs[i-1].At); gap < 80*time.Millisecond {
			t.Errorf("misconfigured retries %v apart, want backoff_max (100ms)", gap)
		}
	}

	fixed.Store(true)
	testkit.Eventually(t, func() bool { return deliveredCount(s) == 10 }, "not delivered after the fix")
	// The state changes first, and the line saying so follows it.
	testkit.Eventually(t, func() bool {
		return g.Status()[0].State == StateUp && strings.Contains(logs.String(), "destination recovered")
	}, "not up after the fix, or no line saying so")
	if dls := deadLetters(t, sp, ""); len(dls) != 0 {
		t.Errorf("%d dead letters for a misconfiguration, want none", len(dls))
	}
	out := logs.String()
	if n := strings.Count(out, "destination misconfigured"); n != 1 {
		t.Errorf("%d misconfigured log lines, want 1 (one per state change):\n%s", n, out)
	}
	if n := strings.Count(out, "destination recovered"); n != 1 {
		t.Errorf("%d recovered log lines, want 1:\n%s", n, out)
	}
	if strings.Contains(out, "wk-secret") || strings.Contains(g.Status()[0].LastError, "wk-secret") {
		t.Errorf("a write key reached the logs or Status:\n%s", out)
	}
}

// Dead letters are logged one line per interval, never one per event, and
// what comes within an interval is logged when it ends, not when the next
// dead letter comes (perhaps never: at shutdown, ten minutes later).
func TestDeadLetterLogIsRateLimitedAndHoldsNothingPastTheInterval(t *testing.T) {
	const every = 400 * time.Millisecond
	s := testkit.NewSink(t, refuseBad("bad event"))
	sp := openSpool(t, t.TempDir(), "dest")
	reg := prometheus.NewRegistry()
	var logs testkit.Buffer
	log := logs.Logger(t)
	d, err := ParseDestination("dest="+s.URL+"?"+opts(testOpts, "batch_events=1"), Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	g, err := newGroup([]Destination{d}, nil, sp, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	g.ds[0].dlEvery = every
	g.Start()
	defer shutdown(t, g, time.Second)
	lines := func() []string {
		var out []string
		for l := range strings.Lines(logs.String()) {
			if strings.Contains(l, "events dead-lettered") {
				out = append(out, l)
			}
		}
		return out
	}
	deadLettered := func() float64 {
		return metric(t, reg, "spillway_events_dead_lettered_total", "reason", spool.ReasonRejected)
	}

	appendEvents(t, sp, ev{id: "bad-1", key: "wk", bad: true})
	testkit.Eventually(t, func() bool { return len(lines()) == 1 }, "the first dead letter was not logged")
	firstSeen := time.Now()
	appendEvents(t, sp, ev{id: "bad-2", key: "wk", bad: true})
	testkit.Eventually(t, func() bool { return deadLettered() == 2 }, "the second event was not dead-lettered")
	if time.Since(firstSeen) < every/2 { // else the interval may have ended: nothing to check
		if got := lines(); len(got) != 1 {
			t.Errorf("%d lines within one interval, want 1:\n%s", len(got), strings.Join(got, ""))
		}
	}
	testkit.Eventually(t, func() bool { return len(lines()) == 2 },
		"the second dead letter was not logged once the interval ended:\n%s", &logs)
	got := lines()
	for _, l := range got {
		if !strings.Contains(l, "reason=rejected events=1") {
			t.Errorf("line %q, want reason=rejected events=1", l)
		}
	}
	if gap := logTime(t, got[1]).Sub(logTime(t, got[0])); gap < every-10*time.Millisecond {
		t.Errorf("lines %v apart, want at least the interval (%v)", gap, every)
	}
}

// logTime is when a text handler's line was logged.
func logTime(t *testing.T, line string) time.Time {
	t.Helper()
	_, rest, _ := strings.Cut(line, "time=")
	v, _, _ := strings.Cut(rest, " ")
	at, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		t.Fatalf("line %q: %v", line, err)
	}
	return at
}

func TestEventsOlderThanMaxAgeAreDeadLetteredAsExpired(t *testing.T) {
	tests := []struct {
		scenario string
		answer   testkit.Answer
		opts     string
		status   int
	}{
		{"while the destination keeps failing", testkit.Answer{Status: 503, Body: "down"}, "", 503},
		{"on time even while the batch waits for a slow misconfigured probe",
			testkit.Answer{Status: 403, Body: "forbidden"}, "backoff_max=1m", 403},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			s := testkit.NewSink(t, func(int, *testkit.Request) testkit.Answer { return tt.answer })
			sp := openSpool(t, t.TempDir(), "dest")
			reg := prometheus.NewRegistry()
			appendEvents(t, sp, numbered(6)...)
			start := time.Now()
			startGroup(t, sp, reg, "dest="+s.URL+"?"+opts(testOpts, "max_age=300ms", tt.opts))

			testkit.Eventually(t, func() bool { return sp.Backlog("dest").Events == 0 },
				"backlog %d: not expired", backlog(sp, "dest"))
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("expired after %v, want about max_age (300ms)", took)
			}
			dls := deadLetters(t, sp, "dest")
			if got, want := deadIDs(dls), ids(numbered(6)); !slices.Equal(got, want) {
				t.Errorf("dead letters %v, want %v", got, want)
			}
			for _, d := range dls {
				if d.Reason != spool.ReasonExpired || d.Status != tt.status ||
					!strings.Contains(d.Error, "max_age 300ms") || !strings.Contains(d.Error, fmt.Sprint(tt.status)) {
					t.Errorf("dead letter %+v", d)
				}
			}
			if n := metric(t, reg, "spillway_events_dead_lettered_total", "reason", "expired"); n != 6 {
				t.Errorf("expired counter %v, want 6", n)
			}
			if deliveredCount(s) != 0 {
				t.Errorf("something was delivered")
			}
		})
	}
}

func TestRoutingByIntegrationsAndFilters(t *testing.T) {
	a, b := testkit.NewSink(t, nil), testkit.NewSink(t, nil)
	sp := openSpool(t, t.TempDir(), "a", "b")
	evs := []ev{
		{id: "plain-track"},
		{id: "identify", typ: "identify"},
		{id: "only-b", extra: `,"integrations":{"All":false,"b":true}`},
		{id: "not-a", extra: `,"integrations":{"a":false}`},
		{id: "page-only-a", typ: "page", extra: `,"integrations":{"All":false,"a":true}`},
	}
	appendEvents(t, sp, evs...)
	startGroup(t, sp, nil, "a="+a.URL+"?flush=5ms", "b="+b.URL+"?flush=5ms&include_types=track")
	testkit.Eventually(t, func() bool {
		return sp.Backlog("a").Events == 0 && sp.Backlog("b").Events == 0
	}, "filtered events were not acknowledged")
	if got, want := a.Delivered(), []string{"identify", "page-only-a", "plain-track"}; !slices.Equal(got, want) {
		t.Errorf("a got %v, want %v", got, want)
	}
	if got, want := b.Delivered(), []string{"not-a", "only-b", "plain-track"}; !slices.Equal(got, want) {
		t.Errorf("b got %v, want %v", got, want)
	}
}

func TestOneDestinationsTroubleNeverDelaysAnother(t *testing.T) {
	refused := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return "http://" + addr
	}
	tests := []struct {
		scenario string
		badURL   func(t *testing.T) string
	}{
		{"the other answers 503", func(t *testing.T) string {
			return testkit.NewSink(t, func(int, *testkit.Request) testkit.Answer { return testkit.Answer{Status: 503} }).URL
		}},
		{"the other hangs", func(t *testing.T) string {
			return testkit.NewSink(t, func(int, *testkit.Request) testkit.Answer { return testkit.Answer{Hang: true} }).URL
		}},
		{"the other refuses connections", refused},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			good := testkit.NewSink(t, nil)
			sp := openSpool(t, t.TempDir(), "good", "bad")
			g := startGroup(t, sp, nil,
				"good="+good.URL+"?batch_events=10&flush=5ms",
				"bad="+tt.badURL(t)+"?batch_events=10&flush=5ms&timeout=5s&backoff_min=5ms&backoff_max=20ms")
			for round := range 3 {
				start := time.Now()
				evs := numbered(30)
				for i := range evs {
					evs[i].id = fmt.Sprintf("r%d-%s", round, evs[i].id)
				}
				appendEvents(t, sp, evs...)
				testkit.Eventually(t, func() bool { return deliveredCount(good) == 30*(round+1) },
					"good destination got %d of %d", func() any { return deliveredCount(good) }, 30*(round+1))
				if took := time.Since(start); took > time.Second {
					t.Errorf("round %d took %v for the good destination", round, took)
				}
			}
			if n := sp.Backlog("bad").Events; n != 90 {
				t.Errorf("bad destination's backlog %d, want 90", n)
			}
			err := shutdown(t, g, 300*time.Millisecond)
			if err == nil || !strings.Contains(err.Error(), "drain bad") || strings.Contains(err.Error(), "good") {
				t.Errorf("Shutdown = %v, want only bad undrained", err)
			}
		})
	}
}

func TestSegmentKind(t *testing.T) {
	keyed := func(n int, keys ...string) []ev {
		evs := numbered(n)
		for i := range evs {
			evs[i].key = keys[i%len(keys)]
			evs[i].extra = fmt.Sprintf(`,"key":%q`, evs[i].key)
		}
		return evs
	}

	t.Run("each request is gzipped and authenticated with its events' own write key", func(t *testing.T) {
		s := testkit.NewSink(t, nil)
		sp := openSpool(t, t.TempDir(), "seg")
		appendEvents(t, sp, keyed(10, "k1", "k2")...)
		startGroup(t, sp, nil, "seg=segment+"+s.URL+"?batch_events=10&flush=5ms")
		testkit.Eventually(t, func() bool { return deliveredCount(s) == 10 }, "not delivered")
		users := map[string]int{}
		for _, r := range s.Requests() {
			users[r.User]++
			if !r.Gzip || r.ContentType != "application/json" {
				t.Errorf("gzip=%v content type %q", r.Gzip, r.ContentType)
			}
			for _, k := range eventKeys(r) {
				if k != r.User {
					t.Errorf("an event of key %s sent under %s", k, r.User)
				}
			}
		}
		if users["k1"] != 1 || users["k2"] != 1 || len(users) != 2 {
			t.Errorf("requests per key %v, want one each", users)
		}
	})

	t.Run("write_key overrides the events' keys", func(t *testing.T) {
		s := testkit.NewSink(t, nil)
		sp := openSpool(t, t.TempDir(), "seg")
		appendEvents(t, sp, keyed(10, "k1", "k2")...)
		startGroup(t, sp, nil, "seg=segment+"+s.URL+"?batch_events=10&flush=5ms&write_key=override")
		testkit.Eventually(t, func() bool { return deliveredCount(s) == 10 }, "not delivered")
		reqs := s.Requests()
		if len(reqs) != 1 || reqs[0].User != "override" {
			t.Errorf("requests %+v, want one under the override key", reqs)
		}
	})

	t.Run("sentAt is the time of sending, not of storing", func(t *testing.T) {
		s := testkit.NewSink(t, testkit.FirstN(1, testkit.Answer{Status: 503}))
		sp := openSpool(t, t.TempDir(), "seg")
		stored := time.Now()
		appendEvents(t, sp, numbered(3)...)
		startGroup(t, sp, nil, "seg=segment+"+s.URL+"?flush=5ms&backoff_min=300ms&backoff_max=400ms")
		testkit.Eventually(t, func() bool { return deliveredCount(s) == 3 }, "not delivered")
		reqs := s.Requests()
		if len(reqs) != 2 {
			t.Fatalf("%d requests, want 2", len(reqs))
		}
		for _, r := range reqs {
			sent, err := time.Parse(time.RFC3339Nano, r.SentAt)
			if err != nil || !strings.HasSuffix(r.SentAt, "Z") {
				t.Fatalf("sentAt %q: %v", r.SentAt, err)
			}
			if d := r.At.Sub(sent); d < -10*time.Millisecond || d > 100*time.Millisecond {
				t.Errorf("sentAt %v is %v before the request arrived", sent, d)
			}
		}
		retrySent, _ := time.Parse(time.RFC3339Nano, reqs[1].SentAt)
		if retrySent.Sub(stored) < 250*time.Millisecond {
			t.Errorf("the retry's sentAt %v is the storing time %v", retrySent, stored)
		}
	})

	t.Run("a refused event under one key does not hold back the other key's events", func(t *testing.T) {
		s := testkit.NewSink(t, refuseBad("bad"))
		sp := openSpool(t, t.TempDir(), "seg")
		evs := keyed(10, "k1", "k2")
		evs[5].bad = true // a k2 event
		appendEvents(t, sp, evs...)
		startGroup(t, sp, nil, "seg=segment+"+s.URL+"?batch_events=10&flush=5ms")
		testkit.Eventually(t, func() bool { return sp.Backlog("seg").Events == 0 }, "not done")
		if got := deadIDs(deadLetters(t, sp, "seg")); !slices.Equal(got, []string{"m-005"}) {
			t.Errorf("dead letters %v, want [m-005]", got)
		}
		if d := s.Duplicates(); len(d) > 0 || deliveredCount(s) != 9 {
			t.Errorf("delivered %v, duplicates %v", s.Delivered(), d)
		}
		for _, r := range s.Requests() {
			if r.User == "k1" && r.Status != 200 {
				t.Errorf("a k1 request was answered %d", r.Status)
			}
		}
	})
}

// partialForwarder fails record by record, as a Kafka kind does: "bad"
// records are refused, "flaky" ones fail once.
type partialForwarder struct {
	mu    sync.Mutex
	sends map[string]int
	ok    map[string]int
}

func (f *partialForwarder) Kind() string { return "partial" }

func (f *partialForwarder) Send(_ context.Context, batch []spool.Record) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	errs := make([]error, len(batch))
	failed := false
	for i, r := range batch {
		id := testkit.MessageID(r.Data)
		f.sends[id]++
		switch {
		case strings.HasPrefix(id, "bad"):
			errs[i] = &RejectedError{Err: errors.New("MESSAGE_TOO_LARGE")}
		case strings.HasPrefix(id, "flaky") && f.sends[id] == 1:
			errs[i] = &RetryableError{Err: errors.New("NOT_LEADER_FOR_PARTITION")}
		default:
			f.ok[id]++
			continue
		}
		failed = true
	}
	if !failed {
		return nil
	}
	return &BatchError{Errs: errs}
}

func (f *partialForwarder) Close(context.Context) error { return nil }

func TestPartialFailuresAreSettledRecordByRecord(t *testing.T) {
	f := &partialForwarder{sends: map[string]int{}, ok: map[string]int{}}
	sp := openSpool(t, t.TempDir(), "k")
	evs := []ev{{id: "good-1"}, {id: "bad-1"}, {id: "flaky-1"}, {id: "good-2"}, {id: "bad-2"}, {id: "flaky-2"}}
	appendEvents(t, sp, evs...)
	d, err := ParseDestination("k=stdout://?"+opts(testOpts, "batch_events=10"), Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	startDests(t, sp, reg, []Destination{d}, []Forwarder{f})
	testkit.Eventually(t, func() bool { return sp.Backlog("k").Events == 0 }, "not done")

	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range []string{"good-1", "good-2"} {
		if f.sends[id] != 1 {
			t.Errorf("%s sent %d times, want once: a partial failure must not resend what succeeded", id, f.sends[id])
		}
	}
	for _, id := range []string{"flaky-1", "flaky-2"} {
		if f.ok[id] != 1 {
			t.Errorf("%s delivered %d times, want once", id, f.ok[id])
		}
	}
	for _, id := range []string{"bad-1", "bad-2"} {
		if f.sends[id] != 1 {
			t.Errorf("%s sent %d times: a record refused on its own needs no splitting", id, f.sends[id])
		}
	}
	dls := deadLetters(t, sp, "k")
	if got := deadIDs(dls); !slices.Equal(got, []string{"bad-1", "bad-2"}) {
		t.Errorf("dead letters %v", got)
	}
	for _, dl := range dls {
		if !strings.Contains(dl.Error, "MESSAGE_TOO_LARGE") || dl.Reason != spool.ReasonRejected {
			t.Errorf("dead letter %+v", dl)
		}
	}
	if n := metric(t, reg, "spillway_events_delivered_total", "destination", "k"); n != 4 {
		t.Errorf("delivered counter %v, want 4", n)
	}
}

func TestShutdown(t *testing.T) {
	t.Run("it drains the backlog, flushing partial batches at once", func(t *testing.T) {
		s := testkit.NewSink(t, nil)
		sp := openSpool(t, t.TempDir(), "dest")
		g := startGroup(t, sp, nil, "dest="+s.URL+"?batch_events=100&flush=1m")
		appendEvents(t, sp, numbered(3)...)
		start := time.Now()
		if err := shutdown(t, g, 5*time.Second); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("drain took %v", took)
		}
		if deliveredCount(s) != 3 || sp.Backlog("dest").Events != 0 {
			t.Errorf("delivered %d, backlog %d after drain", deliveredCount(s), sp.Backlog("dest").Events)
		}
		if err := shutdown(t, g, time.Second); err != nil {
			t.Errorf("second Shutdown: %v", err)
		}
		g.Start() // after Shutdown: nothing happens
	})

	t.Run("it stops at the deadline and cancels sends in flight", func(t *testing.T) {
		s := testkit.NewSink(t, func(int, *testkit.Request) testkit.Answer { return testkit.Answer{Hang: true} })
		sp := openSpool(t, t.TempDir(), "dest")
		appendEvents(t, sp, numbered(7)...)
		g := startGroup(t, sp, nil, "dest="+s.URL+"?flush=5ms&timeout=1m")
		testkit.Eventually(t, func() bool { return len(s.Requests()) > 0 }, "nothing sent")
		start := time.Now()
		err := shutdown(t, g, 200*time.Millisecond)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown = %v, want the deadline", err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("Shutdown took %v past a 200ms deadline", took)
		}
		if n := sp.Backlog("dest").Events; n != 7 {
			t.Errorf("backlog %d, want all 7 left for a restart", n)
		}
	})

	t.Run("without Start it closes the forwarders", func(t *testing.T) {
		sp := openSpool(t, t.TempDir(), "dest")
		g, err := New(nil, sp, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Shutdown(t.Context()); err != nil {
			t.Error(err)
		}
	})
}

func TestStatus(t *testing.T) {
	s := testkit.NewSink(t, func(int, *testkit.Request) testkit.Answer { return testkit.Answer{Status: 503, Body: "maintenance"} })
	sp := openSpool(t, t.TempDir(), "dest")
	appendEvents(t, sp, numbered(4)...)
	g := startGroup(t, sp, nil, "dest="+s.URL+"?"+testOpts)
	testkit.Eventually(t, func() bool { return g.Status()[0].Retried >= 2 }, "no retries")
	time.Sleep(20 * time.Millisecond)

	st := g.Status()[0]
	if st.Name != "dest" || st.Kind != KindWebhook || st.State != StateFailing || st.BacklogEvents != 4 ||
		st.LagSeconds <= 0 || st.Delivered != 0 || !strings.Contains(st.LastError, "503: maintenance") ||
		time.Since(st.LastErrorAt) > time.Minute {
		t.Errorf("status %+v", st)
	}
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "kind", "state", "backlog_events", "lag_seconds", "delivered", "retried",
		"dead_lettered", "last_error", "last_error_at"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("status JSON %s has no %q", raw, k)
		}
	}
}

func TestNewRefusesWhatCannotWork(t *testing.T) {
	sp := openSpool(t, t.TempDir(), "a")
	parse := func(specs ...string) []Destination {
		var out []Destination
		for _, s := range specs {
			d, err := ParseDestination(s, Defaults{})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, d)
		}
		return out
	}
	tests := []struct {
		scenario string
		dests    []Destination
		want     string
	}{
		{"a destination the spool has no cursor for", parse("b=stdout://"), "destination b"},
		{"two destinations of one name", parse("a=stdout://", "a=stdout://"), "name used twice"},
		{"a file in a missing directory, built by hand", []Destination{withURL(parse("a=file://events.ndjson")[0],
			"/nonexistent-dir/x/events.ndjson")}, "open file"},
		{"a destination built by hand without options", []Destination{{Name: "a", Kind: KindStdout}}, "out of range"},
		{"a type filter built by hand with an unknown type", []Destination{withTypes(parse("a=stdout://")[0], "trak")},
			"out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			_, err := New(tt.dests, sp, nil, prometheus.NewRegistry())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want an error about %q", err, tt.want)
			}
		})
	}
	t.Run("metrics registered twice on one registry", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		g, err := New(parse("a=stdout://"), sp, nil, reg)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Shutdown(t.Context())
		if _, err := New(parse("a=stdout://"), sp, nil, reg); err == nil {
			t.Errorf("a second group on the same registry was accepted")
		}
	})
}

func withURL(d Destination, url string) Destination {
	d.URL = url
	return d
}

func withTypes(d Destination, include ...string) Destination {
	d.IncludeTypes = include
	return d
}

// A destination sends one batch at a time until it has taken one: a
// failing destination's other batches would only wait for its probe, each
// holding a batch's memory, so they stay unread in the spool. Once it
// takes one, it goes back to full concurrency.
func TestUnprovenDestinationTakesOneBatchAtATime(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	s := testkit.NewSink(t, func(int, *testkit.Request) testkit.Answer {
		if failing.Load() {
			return testkit.Answer{Status: 503}
		}
		time.Sleep(20 * time.Millisecond) // long enough for sends to overlap
		return testkit.Answer{}
	})
	sp := openSpool(t, t.TempDir(), "dest")
	appendEvents(t, sp, numbered(2000)...)
	startGroup(t, sp, nil, "dest="+s.URL+"?batch_events=100&flush=10ms&concurrency=4&backoff_min=20ms&backoff_max=50ms")
	testkit.Eventually(t, func() bool { return len(s.Requests()) >= 3 }, "no retries")
	// The batch in flight, and the next one, built and waiting.
	if read := sp.Position("dest"); read > 200 {
		t.Errorf("a failing destination read %d events, want at most two batches (200)", read)
	}
	failing.Store(false)
	testkit.Eventually(t, func() bool { return deliveredCount(s) == 2000 }, "not all delivered once it answers")
	var answered []testkit.Request
	for _, r := range s.Requests() {
		if r.Status == 200 {
			answered = append(answered, r)
		}
	}
	if got := mostAtOnce(answered); got < 2 {
		t.Errorf("at most %d requests at once after it answered, want full concurrency back", got)
	}
}
