package forwarders

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
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
			sp := newMemStore("dest")
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
}

func TestAPartialBatchGoesAtItsFlushTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sp := newMemStore("dest")
		f := &fakeForwarder{}
		startFake(t, sp, "dest=stdout://?batch_events=100&flush=300ms", f)
		synctest.Wait()
		start := time.Now()
		appendEvents(t, sp, numbered(2)...)
		time.Sleep(299 * time.Millisecond)
		synctest.Wait()
		if sends := f.calls(); len(sends) != 0 {
			t.Fatalf("sent %v before the flush time", sends)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		sends := f.calls()
		if len(sends) != 1 || len(sends[0].ids) != 2 || !sends[0].at.Equal(start.Add(300*time.Millisecond)) {
			t.Fatalf("sends %+v, want one of 2 events at the 300ms flush", sends)
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

func TestRoutingByIntegrationsAndFilters(t *testing.T) {
	a, b := testkit.NewSink(t, nil), testkit.NewSink(t, nil)
	sp := newMemStore("a", "b")
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

// TestOneDestinationsTroubleNeverDelaysAnother: on the bubble's clock, the
// good destination's events go the moment they are stored, however the
// other one fails, and its shutdown waits for the good one alone.
func TestOneDestinationsTroubleNeverDelaysAnother(t *testing.T) {
	tests := []struct {
		scenario string
		answer   func(context.Context, int, []spool.Record) error
	}{
		{"the other answers 503", failing(errDown)},
		{"the other hangs", hang},
		{"the other refuses connections", failing(&RetryableError{Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}})},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				good, bad := &fakeForwarder{}, &fakeForwarder{answer: tt.answer}
				sp := newMemStore("good", "bad")
				g := startDests(t, sp, nil, []Destination{
					parse(t, "good=stdout://?batch_events=10&flush=5ms"),
					parse(t, "bad=stdout://?batch_events=10&flush=5ms&timeout=5s&backoff_min=5ms&backoff_max=20ms"),
				}, []Forwarder{good, bad})
				for round := range 3 {
					evs := numbered(30)
					for i := range evs {
						evs[i].id = fmt.Sprintf("r%d-%s", round, evs[i].id)
					}
					stored := time.Now()
					appendEvents(t, sp, evs...)
					synctest.Wait()
					if got := len(good.delivered()); got != 30*(round+1) || !time.Now().Equal(stored) {
						t.Fatalf("round %d: the good destination has %d of %d events once everything waits, %v after they were stored",
							round, got, 30*(round+1), time.Since(stored))
					}
					time.Sleep(time.Second) // the bad one's retries, hanging or failing
				}
				if n := sp.Backlog("bad").Events; n != 90 {
					t.Errorf("bad destination's backlog %d, want 90", n)
				}
				err := shutdown(t, g, 300*time.Millisecond)
				if err == nil || !strings.Contains(err.Error(), "drain bad") || strings.Contains(err.Error(), "good") {
					t.Errorf("Shutdown = %v, want only bad undrained", err)
				}
			})
		})
	}
}

func TestShutdown(t *testing.T) {
	t.Run("it drains the backlog, flushing partial batches at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var out testkit.Buffer
			sp := newMemStore("dest")
			d := parse(t, "dest=stdout://?batch_events=100&flush=1m")
			d.Output = &out
			g := startDests(t, sp, nil, []Destination{d}, nil)
			appendEvents(t, sp, numbered(3)...)
			start := time.Now()
			if err := shutdown(t, g, 5*time.Second); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if took := time.Since(start); took != 0 {
				t.Errorf("drain took %v, want no wait for the 1m flush", took)
			}
			if got := lineIDs(t, out.Bytes()); !slices.Equal(got, ids(numbered(3))) || sp.Backlog("dest").Events != 0 {
				t.Errorf("delivered %v, backlog %d after drain", got, sp.Backlog("dest").Events)
			}
			if err := shutdown(t, g, time.Second); err != nil {
				t.Errorf("second Shutdown: %v", err)
			}
			g.Start() // after Shutdown: nothing happens
		})
	})

	t.Run("it stops at the deadline and cancels sends in flight", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := &fakeForwarder{answer: hang}
			sp := newMemStore("dest")
			appendEvents(t, sp, numbered(7)...)
			g := startFake(t, sp, "dest=stdout://?flush=5ms&timeout=1m", f)
			time.Sleep(5 * time.Millisecond)
			synctest.Wait()
			if len(f.calls()) == 0 {
				t.Fatal("nothing sent")
			}
			start := time.Now()
			err := shutdown(t, g, 200*time.Millisecond)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Shutdown = %v, want the deadline", err)
			}
			if took := time.Since(start); took != 200*time.Millisecond {
				t.Errorf("Shutdown took %v, want the 200ms deadline", took)
			}
			if n := sp.Backlog("dest").Events; n != 7 {
				t.Errorf("backlog %d, want all 7 left for a restart", n)
			}
			if sends := f.calls(); !errors.Is(sends[0].err, context.Canceled) {
				t.Errorf("the send in flight ended with %v, want it cancelled", sends[0].err)
			}
		})
	})

	t.Run("without Start it closes the forwarders", func(t *testing.T) {
		f := &fakeForwarder{}
		g, err := newGroup([]Destination{parse(t, "dest=stdout://")}, []Forwarder{f}, newMemStore("dest"), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Shutdown(t.Context()); err != nil || !f.closed {
			t.Errorf("Shutdown = %v, forwarder closed: %v", err, f.closed)
		}
	})
}

func TestStatus(t *testing.T) {
	s := testkit.NewSink(t, always(testkit.Answer{Status: 503, Body: "maintenance"}))
	sp := newMemStore("dest")
	appendEvents(t, sp, numbered(4)...)
	start := time.Now().UTC()
	g := startGroup(t, sp, nil, "dest="+s.URL+"?"+testOpts)
	testkit.Eventually(t, func() bool { return g.Status()[0].Retried >= 2 }, "no retries")

	st := g.Status()[0]
	if st.Name != "dest" || st.Kind != KindWebhook || st.State != StateFailing || st.BacklogEvents != 4 ||
		st.LagSeconds <= 0 || st.Delivered != 0 || !strings.Contains(st.LastError, "503: maintenance") ||
		st.LastErrorAt.Before(start) || st.LastErrorAt.Location() != time.UTC {
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
	parseAll := func(specs ...string) []Destination {
		var out []Destination
		for _, s := range specs {
			out = append(out, parse(t, s))
		}
		return out
	}
	tests := []struct {
		scenario string
		dests    []Destination
		want     string
	}{
		{"a destination the spool has no cursor for", parseAll("b=stdout://"), "destination b"},
		{"two destinations of one name", parseAll("a=stdout://", "a=stdout://"), "name used twice"},
		{"a file in a missing directory, built by hand", []Destination{withURL(parse(t, "a=file://events.ndjson"),
			"/nonexistent-dir/x/events.ndjson")}, "open file"},
		{"a destination built by hand without options", []Destination{{Name: "a", Kind: KindStdout}}, "out of range"},
		{"a type filter built by hand with an unknown type", []Destination{withTypes(parse(t, "a=stdout://"), "trak")},
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
		g, err := New(parseAll("a=stdout://"), sp, nil, reg)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Shutdown(t.Context())
		if _, err := New(parseAll("a=stdout://"), sp, nil, reg); err == nil {
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
	synctest.Test(t, func(t *testing.T) {
		var down atomic.Bool
		down.Store(true)
		f := &fakeForwarder{answer: func(context.Context, int, []spool.Record) error {
			if down.Load() {
				return errDown
			}
			time.Sleep(20 * time.Millisecond)
			return nil
		}}
		sp := newMemStore("dest")
		appendEvents(t, sp, numbered(2000)...)
		startFake(t, sp, "dest=stdout://?batch_events=100&flush=10ms&concurrency=4&backoff_min=20ms&backoff_max=50ms", f)
		time.Sleep(time.Second)
		synctest.Wait()
		if n := len(f.calls()); n < 3 {
			t.Fatalf("%d sends in a second of failures, want retries", n)
		}
		// The batch in flight, and the next one, built and waiting.
		if read := sp.Position("dest"); read > 200 {
			t.Errorf("a failing destination read %d events, want at most two batches (200)", read)
		}
		if f.mostAtOnce() != 1 {
			t.Errorf("%d sends at once while failing, want 1", f.mostAtOnce())
		}
		down.Store(false)
		testkit.Eventually(t, func() bool { return len(f.delivered()) == 2000 }, "not all delivered once it answers")
		if f.mostAtOnce() != 4 {
			t.Errorf("at most %d sends at once after it answered, want concurrency 4 back", f.mostAtOnce())
		}
	})
}

// TestSpoolFailuresAreRetriedAndLoggedOnce: a spool that fails to read,
// acknowledge or store dead letters is retried with backoff; each failure
// is logged when it starts and when it ends, nothing is sent twice, and
// nothing is acknowledged before it is done.
func TestSpoolFailuresAreRetriedAndLoggedOnce(t *testing.T) {
	broken := errors.New("disk on fire")
	tests := []struct {
		scenario           string
		read, ack, dead    error
		tries              func(reads, acks, dead int) int // the failing calls'
		failed, worksAgain string                          // log lines
		lastError          string
		backlog            int64 // while failing
	}{
		{"reads", broken, nil, nil, func(r, _, _ int) int { return r },
			"read from spool failed", "read from spool works again", "read spool: disk on fire", 3},
		{"acknowledgements", nil, broken, nil, func(_, a, _ int) int { return a },
			"acknowledge to spool failed", "acknowledge to spool works again", "ack spool: disk on fire", 3},
		// The refused event's batch waits for its dead letter, and the
		// batch after it for the acknowledgement order.
		{"dead letters", nil, nil, broken, func(_, _, d int) int { return d },
			"store dead letters failed; retrying", "", "store dead letters: disk on fire", 2},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var logs testkit.Buffer
				sp := newMemStore("dest")
				sp.fail(tt.read, tt.ack, tt.dead)
				f := &fakeForwarder{answer: func(_ context.Context, _ int, batch []spool.Record) error {
					if strings.Contains(string(batch[0].Data), `"bad":true`) {
						return &RejectedError{Status: 400}
					}
					return nil
				}}
				d := parse(t, "dest=stdout://?batch_events=1&flush=0s&backoff_min=10ms&backoff_max=100ms")
				g := startLogged(t, sp, logs.Logger(t), nil, []Destination{d}, []Forwarder{f})
				appendEvents(t, sp, numbered(3, 1)...)

				time.Sleep(time.Second)
				synctest.Wait()
				if st := g.Status()[0]; st.LastError != tt.lastError || st.BacklogEvents != tt.backlog {
					t.Errorf("while failing: status %+v, want last error %q and a backlog of %d", st, tt.lastError, tt.backlog)
				}
				if n := tt.tries(sp.calls()); n < 10 || n > 101 {
					t.Errorf("%d tries in a second, want one every 10ms to 100ms", n)
				}

				sp.fail(nil, nil, nil)
				testkit.Eventually(t, func() bool { return sp.Backlog("dest").Events == 0 }, "not done once the spool works")
				if got := f.delivered(); !slices.Equal(got, []string{"m-000", "m-002"}) {
					t.Errorf("delivered %v, want m-000 and m-002 once each", got)
				}
				if got := deadIDs(deadLetters(t, sp, "dest")); !slices.Equal(got, []string{"m-001"}) {
					t.Errorf("dead letters %v, want the refused m-001", got)
				}
				if n := logs.Count(tt.failed); n != 1 {
					t.Errorf("%q logged %d times, want once:\n%s", tt.failed, n, &logs)
				}
				if n := logs.Count(tt.worksAgain); tt.worksAgain != "" && n != 1 {
					t.Errorf("%q logged %d times, want once:\n%s", tt.worksAgain, n, &logs)
				}
			})
		})
	}
}
