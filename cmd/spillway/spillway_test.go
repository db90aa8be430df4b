package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"
	"go.uber.org/goleak"

	"github.com/spillwayhq/spillway/internal/testkit"
)

func TestMain(m *testing.M) {
	cleanup, err := buildBinary()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer cleanup()
		// The analytics-go client leaves no goroutine once closed; httptest
		// servers' idle connections close with them.
		return goleakRun(m)
	}()
	os.Exit(code)
}

func goleakRun(m *testing.M) int {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("internal/poll.runtime_pollWait")); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}

type collectingCallback struct {
	mu      sync.Mutex
	ok, bad int
	errs    []error
}

func (c *collectingCallback) Success(analytics.Message) { c.mu.Lock(); c.ok++; c.mu.Unlock() }
func (c *collectingCallback) Failure(_ analytics.Message, err error) {
	c.mu.Lock()
	c.bad++
	c.errs = append(c.errs, err)
	c.mu.Unlock()
}

func TestAnalyticsGoSendsAllSixCallsThroughToWebhookAndFile(t *testing.T) {
	hook := newSink(t)
	file := filepath.Join(t.TempDir(), "events.ndjson")
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(),
		"--destination", "hook="+hook.URL+"/ingest", "--destination", "file=file://"+file,
		"--flush-interval", "50ms")

	cb := &collectingCallback{}
	client, err := analytics.NewWithConfig("wk-e2e", analytics.Config{Endpoint: p.url(), Interval: 50 * time.Millisecond, BatchSize: 10, Callback: cb})
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	msgs := []analytics.Message{
		analytics.Track{MessageId: "m-track", UserId: "u1", Event: "Signed Up", Timestamp: ts, Properties: analytics.NewProperties().Set("plan", "pro")},
		analytics.Identify{MessageId: "m-identify", UserId: "u1", Timestamp: ts, Traits: analytics.NewTraits().SetEmail("u1@example.com")},
		analytics.Page{MessageId: "m-page", AnonymousId: "a1", Name: "Pricing", Timestamp: ts, Properties: analytics.NewProperties().SetURL("https://example.com/pricing")},
		analytics.Screen{MessageId: "m-screen", UserId: "u1", Name: "Home", Timestamp: ts},
		analytics.Group{MessageId: "m-group", UserId: "u1", GroupId: "g1", Timestamp: ts, Traits: analytics.NewTraits().SetName("Acme")},
		analytics.Alias{MessageId: "m-alias", UserId: "u1", PreviousId: "a1", Timestamp: ts},
	}
	for _, m := range msgs {
		if err := client.Enqueue(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	if cb.bad != 0 || cb.ok != len(msgs) {
		t.Fatalf("client callbacks: %d ok, %d failed: %v", cb.ok, cb.bad, cb.errs)
	}

	want := map[string]string{"m-track": "track", "m-identify": "identify", "m-page": "page", "m-screen": "screen", "m-group": "group", "m-alias": "alias"}
	testkit.Eventually(t, func() bool { u, _ := hook.Counts(); return u == 6 }, "six events at the webhook")
	testkit.Eventually(t, func() bool { return len(readNDJSON(t, file)) == 6 }, "six events in the file")
	fromFile := readNDJSON(t, file)
	if _, received := hook.Counts(); received != 6 {
		t.Errorf("webhook received %d events, want each of the 6 once", received)
	}
	for id, typ := range want {
		atHook, _, _ := hook.Event(id)
		for where, e := range map[string]map[string]any{"webhook": atHook, "file": fromFile[id]} {
			if e == nil {
				t.Errorf("%s: %s missing", where, id)
				continue
			}
			if e["type"] != typ {
				t.Errorf("%s: %s has type %v, want %s", where, id, e["type"], typ)
			}
			if e["receivedAt"] == nil || e["timestamp"] == nil {
				t.Errorf("%s: %s lacks receivedAt or timestamp: %v", where, id, e)
			}
			if _, leaked := e["writeKey"]; leaked {
				t.Errorf("%s: %s carries its write key", where, id)
			}
		}
	}
	if got, _, ok := hook.Event("m-track"); ok {
		props, _ := got["properties"].(map[string]any)
		if got["userId"] != "u1" || got["event"] != "Signed Up" || props["plan"] != "pro" {
			t.Errorf("track arrived as %v", got)
		}
	}
	if got, _, ok := hook.Event("m-group"); ok && got["groupId"] != "g1" {
		t.Errorf("group arrived as %v", got)
	}
	if got, _, ok := hook.Event("m-alias"); ok && got["previousId"] != "a1" {
		t.Errorf("alias arrived as %v", got)
	}
	if got, _, ok := hook.Event("m-identify"); ok {
		traits, _ := got["traits"].(map[string]any)
		if traits["email"] != "u1@example.com" {
			t.Errorf("identify arrived as %v", got)
		}
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d after SIGTERM: %s", code, p.stderr)
	}
}

func TestFailingDestinationDoesNotDelayTheOther(t *testing.T) {
	t.Parallel()
	healthy, failing := newSink(t), newSink(t)
	failing.setStatus(503)
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--flush-interval", "50ms",
		"--destination", "healthy="+healthy.URL, "--destination", "failing="+failing.URL+"?backoff_min=50ms")
	const batches = 20
	for i := 0; i < batches; i++ {
		if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", trackEvents(fmt.Sprintf("b%d", i), 50)); err != nil || code != 200 {
			t.Fatalf("batch %d: %d %v", i, code, err)
		}
	}
	start := time.Now()
	testkit.Eventually(t, func() bool { u, _ := healthy.Counts(); return u == batches*50 }, "every event at the healthy destination")
	t.Logf("healthy destination had all %d events %v after the last ack", batches*50, time.Since(start))
	if u, _ := failing.Counts(); u != 0 {
		t.Fatalf("failing destination recorded %d events while answering 503", u)
	}
	failing.setStatus(200)
	testkit.Eventually(t, func() bool { u, _ := failing.Counts(); return u == batches*50 }, "the failing destination to catch up once it recovers")
}

// TestKilledProcessLosesNoAcknowledgedEvent kills spillway with SIGKILL at
// seeded random moments under concurrent ingest and delivery, restarting it
// on the same spool each time, and checks that every event answered 200
// reaches the destination, and that what was delivered twice is bounded by
// what the spool says it sent again.
func TestKilledProcessLosesNoAcknowledgedEvent(t *testing.T) {
	t.Parallel()
	cycles := 20
	if testing.Short() {
		cycles = 3
	}
	seed := crashSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	hook := newSink(t)
	dir := t.TempDir()
	const batchEvents, concurrency = 100, 4
	// A send that times out is sent again by the same process, uncounted
	// as resent, and a loaded machine (in one CI run, 25 times slower than
	// here) can keep the sink's answer past the default 10 s: restarts
	// are what this bounds, so no send may time out.
	args := []string{"--spool-dir", dir, "--flush-interval", "20ms", "--destination", "hook=" + hook.URL + "?timeout=10m",
		"--batch-max-events", fmt.Sprint(batchEvents), "--concurrency", fmt.Sprint(concurrency)}

	var mu sync.Mutex
	acked := map[string]bool{}
	var kills int
	resent := 0.0 // every start's spillway_events_resent_total
	for cycle := range cycles {
		p := startSpillway(t, "", nil, args...)
		resent += metricValue(t, p, `spillway_events_resent_total{destination="hook"}`)
		ctx, cancel := context.WithCancel(t.Context())
		wg := postAcked(ctx, p.url(), fmt.Sprintf("c%d", cycle), 8, 20, &mu, acked)
		time.Sleep(time.Duration(100+rng.IntN(700)) * time.Millisecond)
		kills++
		p.kill()
		cancel()
		wg.Wait()
	}
	p := startSpillway(t, "", nil, args...)
	resent += metricValue(t, p, `spillway_events_resent_total{destination="hook"}`)
	waitForAll(t, "at the destination", &mu, acked, hook.Has)
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}

	// A start sends again, from its saved cursor, at most what it counts
	// as resent: the read mark it resumes from is written before events
	// past it are read.
	unique, received := hook.Counts()
	dups := received - unique
	t.Logf("%d kills: %d acknowledged, %d unique delivered, %d duplicates (%.0f counted as resent)",
		kills, len(acked), unique, dups, resent)
	if float64(dups) > resent {
		t.Errorf("%d duplicates exceed the %.0f counted as resent: the spool sends again what it does not count", dups, resent)
	}
}

func TestShutdownDrainsAndExitsZero(t *testing.T) {
	hook := newSink(t)
	var out bytes.Buffer
	p := startSpillway(t, "", &out, "--spool-dir", t.TempDir(), "--flush-interval", "10s", "--destination", "hook="+hook.URL)
	if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", trackEvents("s", 30)); err != nil || code != 200 {
		t.Fatalf("batch: %d %v", code, err)
	}
	// The flush interval is far longer than the test: only the drain at
	// shutdown can deliver these.
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}
	if u, _ := hook.Counts(); u != 30 {
		t.Fatalf("destination had %d of 30 events after a graceful shutdown", u)
	}
	for _, step := range []string{"refusing new events", "draining destinations", "closing spool"} {
		if !strings.Contains(p.stderr.String(), step) {
			t.Errorf("shutdown log lacks %q", step)
		}
	}
}

// TestShutdownAnswers503WhileDrainingUntilASecondSignal keeps a
// destination failing so the drain would last its whole
// --shutdown-timeout: meanwhile new events get 503 with Retry-After (an SDK
// keeps them and retries), not a refused connection, and /readyz and
// /metrics still answer. A second signal then abandons the drain, but the
// spool still closes cleanly on a working disk: exit 0, nothing to recover
// at the next start, and every event acknowledged before the signal
// delivered after it.
func TestShutdownAnswers503WhileDrainingUntilASecondSignal(t *testing.T) {
	t.Parallel()
	d := startDraining(t, "10m")
	p := d.p

	resp, err := http.Post(p.url()+"/v1/track", "application/json", strings.NewReader(`{"userId":"u","event":"late"}`))
	if err != nil {
		t.Fatalf("event during the drain: %v (want a 503 answer)", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), `"success":false`) {
		t.Errorf("event during the drain: %d Retry-After %q %s, want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	for path, want := range map[string]int{"/readyz": 503, "/healthz": 200, "/metrics": 200} {
		resp, err := http.Get(p.url() + path)
		if err != nil {
			t.Errorf("%s during the drain: %v", path, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s during the drain: %d, want %d", path, resp.StatusCode, want)
		}
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(); code != 0 {
		t.Errorf("exit status %d after a second signal on a working disk: %s", code, p.stderr)
	}
	log := p.stderr.String()
	// Cancelled, where a drain that ran out its time would say its
	// deadline was exceeded.
	if !strings.Contains(log, "second signal: abandoning the drain") || !strings.Contains(log, "drain hook: context canceled") {
		t.Errorf("the drain was not abandoned at the second signal: %s", log)
	}
	if strings.Contains(log, "did not finish") || !strings.Contains(log, "spool closed") {
		t.Errorf("the spool was not closed cleanly: %s", log)
	}
	p = d.restartDelivers(t)
	if strings.Contains(p.stderr.String(), "unclean") {
		t.Errorf("the next start recovered the spool as after a crash: %s", p.stderr)
	}
}

// draining is a spillway whose only destination fails (503), so that after
// the SIGTERM it was sent it drains for its whole --shutdown-timeout,
// holding the acknowledged events acked.
type draining struct {
	p     *process
	hook  *sink
	args  []string
	acked []map[string]any
}

func startDraining(t *testing.T, shutdownTimeout string) *draining {
	t.Helper()
	d := &draining{hook: newSink(t), acked: trackEvents("drain", 10)}
	d.hook.setStatus(503)
	d.args = []string{"--spool-dir", filepath.Join(t.TempDir(), "spool"), "--shutdown-timeout", shutdownTimeout,
		"--backoff-min", "100ms", "--backoff-max", "200ms", "--destination", "hook=" + d.hook.URL}
	d.p = startSpillway(t, "", nil, d.args...)
	if code, err := postBatch(t.Context(), http.DefaultClient, d.p.url(), "wk", d.acked); err != nil || code != 200 {
		t.Fatalf("batch: %d %v", code, err)
	}
	if err := d.p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, func() bool { return strings.Contains(d.p.stderr.String(), "draining destinations") }, "the drain")
	return d
}

// restartDelivers starts spillway again, on the same spool, with the
// destination healthy: every acknowledged event must arrive.
func (d *draining) restartDelivers(t *testing.T) *process {
	t.Helper()
	d.hook.setStatus(200)
	p := startSpillway(t, "", nil, d.args...)
	var mu sync.Mutex
	want := map[string]bool{}
	for _, e := range d.acked {
		want[e["messageId"].(string)] = true
	}
	waitForAll(t, "at the destination after the restart", &mu, want, d.hook.Has)
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}
	return p
}

// TestShutdownOnAStuckDiskExitsAndLosesNothing takes the spool's
// generations away from a running spillway, as a disk that stops taking
// writes would: closing the spool then never ends inside Badger, yet
// SIGTERM still ends the process (after the drain and the close's bound,
// or at a second signal), and once the disk is back a restart delivers
// every acknowledged event.
func TestShutdownOnAStuckDiskExitsAndLosesNothing(t *testing.T) {
	t.Parallel()
	for _, secondSignal := range []bool{false, true} {
		t.Run(fmt.Sprintf("second_signal=%v", secondSignal), func(t *testing.T) {
			hook := newSink(t)
			hook.setStatus(503) // keeps the events in the spool
			spoolDir := filepath.Join(t.TempDir(), "spool")
			args := []string{"--spool-dir", spoolDir, "--shutdown-timeout", "1s", "--destination", "hook=" + hook.URL}
			p := startSpillway(t, "", nil, args...)
			var mu sync.Mutex
			acked := map[string]bool{}
			for i := range 3 {
				evs := trackEvents(fmt.Sprintf("stuck%d", i), 20)
				if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", evs); err != nil || code != 200 {
					t.Fatalf("batch: %d %v", code, err)
				}
				for _, e := range evs {
					acked[e["messageId"].(string)] = true
				}
			}
			// Once the generation opened ahead of need is there too, and
			// opened: Badger's open of a directory that went away midway
			// ends the process (log.Fatal) instead of leaving a close to
			// hang. Its value log is the last file the open creates.
			var gens []string
			testkit.Eventually(t, func() bool {
				gens, _ = filepath.Glob(filepath.Join(spoolDir, "gen-*"))
				for _, g := range gens {
					if logs, _ := filepath.Glob(filepath.Join(g, "*.vlog")); len(logs) == 0 {
						return false
					}
				}
				return len(gens) >= 2
			}, "two generations opened")
			moved := t.TempDir()
			for _, g := range gens {
				if err := os.Rename(g, filepath.Join(moved, filepath.Base(g))); err != nil {
					t.Fatal(err)
				}
			}

			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			// The close's cause says which bound ended it.
			cause := fmt.Sprintf("not closed within %v", spoolCloseTimeout)
			if secondSignal {
				testkit.Eventually(t, func() bool { return strings.Contains(p.stderr.String(), "closing spool") }, "the spool's close")
				if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
				cause = fmt.Sprintf("not closed within %v after a second signal", hurriedCloseTimeout)
			}
			if code := p.wait(); code == 0 {
				t.Errorf("exit status 0 after an unclean close: %s", p.stderr)
			}
			if log := p.stderr.String(); !strings.Contains(log, "spool close did not finish") || !strings.Contains(log, cause) {
				t.Errorf("the log does not say the spool's close was abandoned (%s): %s", cause, log)
			}

			for _, g := range gens {
				if err := os.Rename(filepath.Join(moved, filepath.Base(g)), g); err != nil {
					t.Fatal(err)
				}
			}
			hook.setStatus(200)
			p = startSpillway(t, "", nil, args...)
			waitForAll(t, "at the destination after the restart", &mu, acked, hook.Has)
			if code := p.stop(); code != 0 {
				t.Fatalf("exit status %d: %s", code, p.stderr)
			}
		})
	}
}

// TestClosedStdoutFailsTheDestinationNotTheProcess: with stdout a pipe
// nobody reads any more (spillway run | head), Go would kill the process
// with SIGPIPE at the first event printed, silently. The stdout destination
// must fail as any other does instead: the process answers, the failure is
// logged and reported, and the events stay in the spool.
func TestClosedStdoutFailsTheDestinationNotTheProcess(t *testing.T) {
	t.Parallel()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	spoolDir := filepath.Join(t.TempDir(), "spool")
	args := []string{"--spool-dir", spoolDir, "--shutdown-timeout", "1s", "--backoff-min", "50ms", "--backoff-max", "200ms"}
	p := startSpillway(t, "", w, args...)
	w.Close() // the child holds its own copy
	evs := trackEvents("epipe", 3)
	if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", evs); err != nil || code != 200 {
		t.Fatalf("batch: %d %v", code, err)
	}
	testkit.Eventually(t, func() bool {
		select {
		case <-p.done:
			t.Fatalf("spillway died writing to a closed stdout (%v): %s", p.cmd.ProcessState, p.stderr)
		default:
		}
		return strings.Contains(p.stderr.String(), "broken pipe")
	}, "the failed write in the log")
	resp, err := http.Get(p.url() + "/healthz")
	if err != nil {
		t.Fatalf("/healthz after the failed write: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz after the failed write: %d", resp.StatusCode)
	}
	out := runCLI(t, "status", "--addr", p.addr, "--json")
	if !strings.Contains(out, `"state":"failing"`) || !strings.Contains(out, `"backlog_events":3`) {
		t.Errorf("status after the failed write: %s; want failing with the 3 events in its backlog", out)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}

	var stdout testkit.Buffer
	p = startSpillway(t, "", &stdout, args...)
	testkit.Eventually(t, func() bool {
		for _, e := range evs {
			if !strings.Contains(stdout.String(), `"`+e["messageId"].(string)+`"`) {
				return false
			}
		}
		return true
	}, "the kept events on a working stdout")
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}
}

func TestNoFlagsPrintsEventsToStdout(t *testing.T) {
	var out testkit.Buffer
	dir := t.TempDir()
	p := startSpillway(t, "", &out, "--spool-dir", filepath.Join(dir, "data"))
	if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", trackEvents("stdout", 3)); err != nil || code != 200 {
		t.Fatalf("batch: %d %v", code, err)
	}
	testkit.Eventually(t, func() bool { return strings.Count(out.String(), "\n") >= 3 }, "three events on stdout")
	if !strings.Contains(out.String(), `"stdout-2"`) {
		t.Fatalf("stdout: %s", out.String())
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d", code)
	}
}

func TestBadFlagsExitTwoNamingTheFlag(t *testing.T) {
	cases := map[string]struct {
		args []string
		want string
	}{
		"an unknown sync mode":          {[]string{"--sync", "sometimes"}, "--sync"},
		"a size that is not a size":     {[]string{"--max-event-bytes", "lots"}, "max-event-bytes"},
		"a destination without a name":  {[]string{"--destination", "http://x"}, "--destination"},
		"a destination of unknown kind": {[]string{"--destination", "x=gopher://x"}, "--destination"},
		"a destination name given twice": {[]string{"--destination", "x=stdout://", "--destination", "x=file:///tmp/x.ndjson"},
			"--destination: destination x: name used twice"},
		"an unknown log format": {[]string{"--log-format", "xml"}, "--log-format"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := run(t.Context(), append([]string{"run", "--spool-dir", t.TempDir()}, c.args...), &bytes.Buffer{}, &stderr)
			if code != 2 || !strings.Contains(stderr.String(), c.want) {
				t.Fatalf("exit %d, stderr %q; want 2 naming %s", code, stderr.String(), c.want)
			}
		})
	}
}

// TestADestinationWithoutANameIsNotEchoed: the URL may hold a password.
func TestADestinationWithoutANameIsNotEchoed(t *testing.T) {
	var stderr bytes.Buffer
	code := run(t.Context(), []string{"run", "--spool-dir", t.TempDir(), "--destination", "https://user:s3cret@example.com/hook"}, &bytes.Buffer{}, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "NAME=URL") || strings.Contains(stderr.String(), "s3cret") {
		t.Fatalf("exit %d, stderr %q; want 2, asking for NAME=URL without echoing the URL", code, stderr.String())
	}
}

func TestFlagsAreReadFromTheEnvironment(t *testing.T) {
	t.Setenv("SPILLWAY_SYNC", "interval")
	t.Setenv("SPILLWAY_MAX_EVENT_BYTES", "16KiB")
	t.Setenv("SPILLWAY_DESTINATION", "a=stdout:// b=http://127.0.0.1:1/x")
	c, dests, _, err := configure([]string{"--max-batch-events", "10"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.spool.Sync.String() != "interval" || c.proxy.MaxEventBytes != 16<<10 || len(dests) != 2 || c.proxy.MaxBatchEvents != 10 {
		t.Fatalf("config from env: sync %v, max event %d, %d destinations", c.spool.Sync, c.proxy.MaxEventBytes, len(dests))
	}
	t.Setenv("SPILLWAY_MAX_BATCH_EVENTS", "99")
	c, _, _, _ = configure([]string{"--max-batch-events", "10"}, &bytes.Buffer{})
	if c.proxy.MaxBatchEvents != 10 {
		t.Fatalf("the command line must win over the environment, got %d", c.proxy.MaxBatchEvents)
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if code := run(t.Context(), []string{"version"}, &out, &out); code != 0 || !strings.HasPrefix(out.String(), "spillway ") {
		t.Fatalf("version: %d %q", code, out.String())
	}
}

// TestSizesAreShownInTheUnitsTheyWereGivenIn: -h shows Segment's 500 KB
// limit as 500 kB, not 488 KiB, and binary sizes as such.
func TestSizesAreShownInTheUnitsTheyWereGivenIn(t *testing.T) {
	for in, want := range map[string]string{"500KB": "500 kB", "32KiB": "32 KiB", "1GiB": "1.0 GiB", "4MiB": "4.0 MiB"} {
		var b byteSize
		if err := b.Set(in); err != nil {
			t.Fatal(err)
		}
		if got := b.String(); got != want {
			t.Errorf("%s is shown as %q, want %q", in, got, want)
		}
	}
}

func TestVersionTakesNoArguments(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), []string{"version", "--json"}, &stdout, &stderr); code != 2 || stdout.Len() != 0 {
		t.Fatalf("version --json: exit %d, stdout %q; want 2 and nothing printed", code, stdout.String())
	}
	stdout.Reset()
	if code := run(t.Context(), []string{"version"}, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "spillway ") {
		t.Fatalf("version: exit %d, stdout %q", code, stdout.String())
	}
}
