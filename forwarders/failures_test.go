package forwarders

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
)

// TestRetriesBackOffWithFullJitter: on the bubble's clock, the k-th retry
// of a failing destination waits between backoff_min and
// backoff_min·2^k, capped at backoff_max, and never less than a
// Retry-After.
func TestRetriesBackOffWithFullJitter(t *testing.T) {
	const lo, hi = 100 * time.Millisecond, time.Second
	synctest.Test(t, func(t *testing.T) {
		reg := prometheus.NewRegistry()
		f := &fakeForwarder{answer: func(_ context.Context, n int, _ []spool.Record) error {
			switch {
			case n < 5:
				return errDown
			case n == 5:
				return &RetryableError{Err: &statusError{code: http.StatusTooManyRequests}, After: 700 * time.Millisecond}
			}
			return nil
		}}
		sp := newMemStore("dest")
		appendEvents(t, sp, numbered(3)...)
		startDests(t, sp, reg, []Destination{parse(t, "dest=stdout://?concurrency=1&flush=0s&backoff_min=100ms&backoff_max=1s")},
			[]Forwarder{f})
		testkit.Eventually(t, func() bool { return len(f.delivered()) == 3 }, "not delivered")

		sends := f.calls()
		if len(sends) != 7 {
			t.Fatalf("%d sends, want 5 failures, a 429 and a success", len(sends))
		}
		for k := 1; k < len(sends); k++ {
			gap := sends[k].at.Sub(sends[k-1].at)
			floor, ceil := lo, min(lo<<k, hi)
			if k == 6 {
				floor = 700 * time.Millisecond // Retry-After
			}
			if gap < floor || gap > ceil {
				t.Errorf("retry %d came %v after the failure, want within [%v, %v]", k, gap, floor, ceil)
			}
		}
		if n := metric(t, reg, "spillway_forward_retries_total", "reason", "server_error"); n != 5 {
			t.Errorf("%v server_error retries, want 5", n)
		}
		if n := metric(t, reg, "spillway_forward_retries_total", "reason", "throttled"); n != 1 {
			t.Errorf("%v throttled retries, want 1", n)
		}
	})
}

func TestMisconfiguredDestinationIsRetriedSlowlyAndNeverDeadLettered(t *testing.T) {
	var fixed atomic.Bool
	s := testkit.NewSink(t, func(int, *testkit.Request) testkit.Answer {
		if fixed.Load() {
			return testkit.Answer{}
		}
		return testkit.Answer{Status: 401, Body: `{"message":"invalid write key"}`}
	})
	sp := newMemStore("dest")
	reg := prometheus.NewRegistry()
	var logs testkit.Buffer
	evs := numbered(10)
	for i := range evs {
		evs[i].key = "wk-secret"
	}
	appendEvents(t, sp, evs...)
	d := parse(t, "dest=segment+"+s.URL+"?"+opts(testOpts, "backoff_max=100ms"))
	g := startLogged(t, sp, logs.Logger(t), reg, []Destination{d}, nil)

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
	// backoff_max apart: a machine can be slower than that, never faster.
	reqs := s.Requests()
	for i := 2; i < len(reqs); i++ {
		if gap := reqs[i].At.Sub(reqs[i-1].At); gap < 100*time.Millisecond {
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
	if n := logs.Count("destination misconfigured"); n != 1 {
		t.Errorf("%d misconfigured log lines, want 1 (one per state change):\n%s", n, &logs)
	}
	if n := logs.Count("destination recovered"); n != 1 {
		t.Errorf("%d recovered log lines, want 1:\n%s", n, &logs)
	}
	if strings.Contains(logs.String(), "wk-secret") || strings.Contains(g.Status()[0].LastError, "wk-secret") {
		t.Errorf("a write key reached the logs or status:\n%s", &logs)
	}
}

// TestMisconfiguredDestinationIsProbedEveryBackoffMax: on the bubble's
// clock, one probe exactly every backoff_max, however many batches wait.
func TestMisconfiguredDestinationIsProbedEveryBackoffMax(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		misconfigured := withBody(classify(401, nil), "invalid write key")
		f := &fakeForwarder{answer: func(_ context.Context, n int, _ []spool.Record) error {
			if n < 4 {
				return misconfigured
			}
			return nil
		}}
		sp := newMemStore("dest")
		appendEvents(t, sp, numbered(20)...)
		startFake(t, sp, "dest=stdout://?"+opts(testOpts, "backoff_max=100ms"), f)
		testkit.Eventually(t, func() bool { return len(f.delivered()) == 20 }, "not delivered")
		sends := f.calls()
		for k := 1; k <= 4; k++ {
			if gap := sends[k].at.Sub(sends[k-1].at); gap != 100*time.Millisecond {
				t.Errorf("probe %d came %v after the last, want backoff_max (100ms)", k, gap)
			}
		}
		// The first batch probed; the other three waited for it, unsent.
		if len(sends) != 8 {
			t.Errorf("%d sends, want 4 failed probes and 4 batches", len(sends))
		}
	})
}

func TestEventsOlderThanMaxAgeAreDeadLetteredAsExpired(t *testing.T) {
	tests := []struct {
		scenario string
		err      error
		opts     string
		status   int
	}{
		{"while the destination keeps failing", withBody(classify(503, nil), "down"), "", 503},
		{"on time even while the batch waits for a slow misconfigured probe",
			withBody(classify(403, nil), "forbidden"), "backoff_max=1m", 403},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := &fakeForwarder{answer: failing(tt.err)}
				sp := newMemStore("dest")
				reg := prometheus.NewRegistry()
				stored := time.Now()
				appendEvents(t, sp, numbered(6)...)
				d := parse(t, "dest=stdout://?"+opts(testOpts, "max_age=300ms", tt.opts))
				startDests(t, sp, reg, []Destination{d}, []Forwarder{f})

				testkit.Eventually(t, func() bool { return sp.Backlog("dest").Events == 0 },
					"backlog %d: not expired", backlog(sp, "dest"))
				dls := deadLetters(t, sp, "dest")
				if got, want := deadIDs(dls), ids(numbered(6)); !slices.Equal(got, want) {
					t.Errorf("dead letters %v, want %v", got, want)
				}
				for _, d := range dls {
					if d.Reason != spool.ReasonExpired || d.Status != tt.status || !d.At.Equal(stored.Add(300*time.Millisecond)) ||
						!strings.Contains(d.Error, "max_age 300ms") || !strings.Contains(d.Error, fmt.Sprint(tt.status)) {
						t.Errorf("dead letter %+v, want it at max_age (300ms) naming the last error", d)
					}
				}
				if n := metric(t, reg, "spillway_events_dead_lettered_total", "reason", "expired"); n != 6 {
					t.Errorf("expired counter %v, want 6", n)
				}
				if got := f.delivered(); len(got) != 0 {
					t.Errorf("delivered %v", got)
				}
			})
		})
	}
}

// Dead letters are logged one line per interval, never one per event, and
// what comes within an interval is logged when it ends, not when the next
// dead letter comes (perhaps never: at shutdown, ten minutes later).
func TestDeadLetterLogIsRateLimitedAndHoldsNothingPastTheInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs testkit.Buffer
		f := &fakeForwarder{answer: failing(&RejectedError{Status: 400, Body: "bad event"})}
		sp := newMemStore("dest")
		d := parse(t, "dest=stdout://?"+opts(testOpts, "batch_events=1"))
		startLogged(t, sp, logs.Logger(t), nil, []Destination{d}, []Forwarder{f})
		lines := func() []string { return logs.Lines("events dead-lettered") }

		start := time.Now()
		appendEvents(t, sp, ev{id: "bad-1", key: "wk"})
		synctest.Wait()
		if got := lines(); len(got) != 1 || !logTime(t, got[0]).Equal(start) {
			t.Fatalf("lines %q, want the first dead letter logged at once", got)
		}
		time.Sleep(10 * time.Second)
		appendEvents(t, sp, ev{id: "bad-2", key: "wk"})
		synctest.Wait()
		if n := len(deadLetters(t, sp, "dest")); n != 2 {
			t.Fatalf("%d dead letters, want 2", n)
		}
		if got := lines(); len(got) != 1 {
			t.Errorf("%d lines within one interval, want 1:\n%s", len(got), strings.Join(got, ""))
		}
		time.Sleep(deadLetterLogEvery)
		got := lines()
		if len(got) != 2 {
			t.Fatalf("the second dead letter was not logged once the interval ended:\n%s", &logs)
		}
		for _, l := range got {
			if !strings.Contains(l, "reason=rejected events=1") {
				t.Errorf("line %q, want reason=rejected events=1", l)
			}
		}
		if at := logTime(t, got[1]); !at.Equal(start.Add(deadLetterLogEvery)) {
			t.Errorf("second line at %v, want at the end of the interval, %v", at.Sub(start), deadLetterLogEvery)
		}
	})
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
	synctest.Test(t, func(t *testing.T) {
		f := &partialForwarder{sends: map[string]int{}, ok: map[string]int{}}
		sp := newMemStore("k")
		evs := []ev{{id: "good-1"}, {id: "bad-1"}, {id: "flaky-1"}, {id: "good-2"}, {id: "bad-2"}, {id: "flaky-2"}}
		appendEvents(t, sp, evs...)
		reg := prometheus.NewRegistry()
		startDests(t, sp, reg, []Destination{parse(t, "k=stdout://?"+opts(testOpts, "batch_events=10"))}, []Forwarder{f})
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
	})
}
