package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// sdkNodeDir holds the pinned @segment/analytics-node and send.mjs, which
// sends one event of each call the SDK has (seven events in all).
const sdkNodeDir = "testdata/sdk-node"

// findNodeSDK returns node and the version of @segment/analytics-node that
// send.mjs will load, skipping (failing under CI=true) when either is
// missing or node_modules is not what package.json pins.
func findNodeSDK(t *testing.T) (node, version string) {
	t.Helper()
	missing := func(msg string) {
		t.Helper()
		msg += "; run `npm ci` in cmd/spillway/" + sdkNodeDir
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + ", and CI=true: .ci/run and scripts/test should have installed it")
		}
		t.Skip(msg)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node is not installed (apt-get install -y nodejs npm) for the analytics-node test")
	}
	var pinned struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	var installed struct {
		Version string `json:"version"`
	}
	b, err := os.ReadFile(filepath.Join(sdkNodeDir, "package.json"))
	if err == nil {
		err = json.Unmarshal(b, &pinned)
	}
	if err != nil {
		t.Fatal(err)
	}
	want := pinned.Dependencies["@segment/analytics-node"]
	b, err = os.ReadFile(filepath.Join(sdkNodeDir, "node_modules", "@segment", "analytics-node", "package.json"))
	if err != nil {
		missing("@segment/analytics-node is not installed")
	}
	if err := json.Unmarshal(b, &installed); err != nil {
		t.Fatal(err)
	}
	if installed.Version != want {
		missing(fmt.Sprintf("node_modules holds @segment/analytics-node %s, package.json pins %s", installed.Version, want))
	}
	return node, installed.Version
}

// nodeSDK is one run of send.mjs.
type nodeSDK struct {
	cmd            *exec.Cmd
	stdout, stderr testkit.Buffer
	done           chan struct{}
}

func startNodeSDK(t *testing.T, node, url, writeKey, run string, env ...string) *nodeSDK {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	r := &nodeSDK{done: make(chan struct{})}
	r.cmd = exec.CommandContext(ctx, node, "send.mjs", url, writeKey, run)
	r.cmd.Dir = sdkNodeDir
	r.cmd.Env = append(os.Environ(), env...)
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
	if err := r.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() { _ = r.cmd.Wait(); cancel(); close(r.done) }()
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

// wait returns the script's exit status.
func (r *nodeSDK) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-r.done:
		return r.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		t.Fatalf("send.mjs still running after %v: %s", within, r.stderr.String())
		return -1
	}
}

// delivered are the events the SDK reported delivered, as it sent them,
// by messageId.
func (r *nodeSDK) delivered(t *testing.T) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	sc := bufio.NewScanner(strings.NewReader(r.stdout.String()))
	for sc.Scan() {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("send.mjs printed %q: %v", sc.Text(), err)
		}
		id, _ := e["messageId"].(string)
		if id == "" {
			t.Fatalf("the SDK sent an event without a messageId: %s", sc.Text())
		}
		out[id] = e
	}
	return out
}

func (r *nodeSDK) requests() int { return strings.Count(r.stderr.String(), "request: POST") }

// sdkNodeWant is what send.mjs sends for RUN, one object per event: the
// fields each event must arrive with.
const sdkNodeWant = `[
 {"type":"track","event":"Order Completed","userId":"node-user-RUN",
  "properties":{"orderId":"order-RUN","revenue":42.5,"currency":"EUR","products":[{"sku":"sku-1","quantity":2}]}},
 {"type":"track","event":"Product Viewed","anonymousId":"node-anon-RUN","properties":{"sku":"sku-1"}},
 {"type":"identify","userId":"node-user-RUN","anonymousId":"node-anon-RUN",
  "traits":{"email":"RUN@example.com","plan":"pro","logins":3}},
 {"type":"page","anonymousId":"node-anon-RUN","name":"Pricing","category":"Docs"},
 {"type":"screen","userId":"node-user-RUN","name":"Home","properties":{"variant":"b"}},
 {"type":"group","userId":"node-user-RUN","groupId":"group-RUN","traits":{"name":"Acme","employees":120}},
 {"type":"alias","userId":"node-user-RUN","previousId":"node-anon-RUN"}
]`

// checkNodeEvents checks that got, the events a destination received by
// messageId, holds exactly the SDK's delivered events of run: each with the
// fields sdkNodeWant lists, every field the SDK set unchanged (its
// context.library included) but the timestamp, which is kept as
// originalTimestamp and re-derived from receivedAt, and nothing added but
// receivedAt: no writeKey.
func checkNodeEvents(t *testing.T, where, run, libVersion string, sdk, got map[string]map[string]any) {
	t.Helper()
	var want []map[string]any
	if err := json.Unmarshal([]byte(strings.ReplaceAll(sdkNodeWant, "RUN", run)), &want); err != nil {
		t.Fatal(err)
	}
	if len(sdk) != len(want) {
		t.Fatalf("the SDK reported %d events delivered, want %d", len(sdk), len(want))
	}
	matched := 0
	for _, w := range want {
		for id, s := range sdk {
			if s["type"] != w["type"] || s["event"] != w["event"] {
				continue
			}
			matched++
			e := got[id]
			if e == nil {
				t.Errorf("%s: %s %v (%s) never arrived", where, w["type"], w["event"], id)
				break
			}
			for k, v := range w {
				if !reflect.DeepEqual(e[k], v) {
					t.Errorf("%s: %s %v: %s is %v, want %v", where, w["type"], w["event"], k, e[k], v)
				}
			}
			checkNodeEnrichment(t, where+": "+id, libVersion, s, e)
		}
	}
	if matched != len(want) {
		t.Errorf("the SDK's events match %d of the %d expected", matched, len(want))
	}
	for id, e := range got {
		if (e["userId"] == "node-user-"+run || e["anonymousId"] == "node-anon-"+run) && sdk[id] == nil {
			t.Errorf("%s: %s of run %s was not reported delivered by the SDK: %v", where, id, run, e)
		}
	}
}

func checkNodeEnrichment(t *testing.T, where, libVersion string, sdk, got map[string]any) {
	t.Helper()
	for k, v := range sdk {
		if k == "timestamp" {
			continue
		}
		if !reflect.DeepEqual(got[k], v) {
			t.Errorf("%s: %s arrived as %v, the SDK sent %v", where, k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := sdk[k]; !ok && k != "originalTimestamp" && k != "receivedAt" {
			t.Errorf("%s: %s=%v was added on the way", where, k, got[k])
		}
	}
	if got["originalTimestamp"] != sdk["timestamp"] {
		t.Errorf("%s: originalTimestamp %v, want the SDK's timestamp %v", where, got["originalTimestamp"], sdk["timestamp"])
	}
	parse := func(k string) time.Time {
		s, _ := got[k].(string)
		ts, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Errorf("%s: %s %q: %v", where, k, s, err)
		}
		return ts
	}
	received, ts, device := parse("receivedAt"), parse("timestamp"), parse("originalTimestamp")
	// receivedAt - timestamp is the SDK's sentAt - timestamp: how long the
	// event waited in the SDK, retries included.
	if d := received.Sub(ts); d < 0 || d > 30*time.Second {
		t.Errorf("%s: timestamp %v is %v before receivedAt %v, not corrected by the SDK's sentAt", where, ts, d, received)
	}
	if d := time.Since(received); d < 0 || d > time.Minute || received.Sub(device) > time.Minute {
		t.Errorf("%s: receivedAt %v is not the time of receipt (device time %v)", where, received, device)
	}
	ctx, _ := got["context"].(map[string]any)
	lib, _ := ctx["library"].(map[string]any)
	if lib["name"] != "@segment/analytics-node" || lib["version"] != libVersion {
		t.Errorf("%s: context.library %v, want @segment/analytics-node %s", where, lib, libVersion)
	}
}

// TestAnalyticsNodeSendsEveryCallThroughUnchanged runs two apps' SDKs, set
// up as the README says, under different write keys at once: every event
// each reports delivered reaches a file and a Segment-compatible
// destination with the fields the SDK gave it, and reaches the latter under
// the key it came with, with a sentAt of its sending.
func TestAnalyticsNodeSendsEveryCallThroughUnchanged(t *testing.T) {
	t.Parallel()
	node, libVersion := findNodeSDK(t)
	api := newSegmentAPI(t)
	file := filepath.Join(t.TempDir(), "events.ndjson")
	// A flush longer than the two SDKs' sends are apart puts both keys in
	// one batch, which the Segment forwarder must split by key.
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--flush-interval", "20ms",
		"--destination", "file=file://"+file, "--destination", "seg=segment+"+api.srv.URL+"?flush=300ms")

	keys := map[string]string{"a": "wk-node-a", "b": "wk-node-b"}
	sdks := map[string]*nodeSDK{}
	for run, key := range keys {
		sdks[run] = startNodeSDK(t, node, p.url(), key, run)
	}
	sent := map[string]map[string]any{}
	for run, r := range sdks {
		if code := r.wait(t, 20*time.Second); code != 0 {
			t.Fatalf("send.mjs %s: exit status %d: %s", run, code, r.stderr.String())
		}
		for id, e := range r.delivered(t) {
			sent[id] = e
		}
	}
	if len(sent) != 14 {
		t.Fatalf("the SDKs reported %d distinct events delivered, want 7 each", len(sent))
	}
	testkit.Eventually(t, func() bool { return len(readNDJSON(t, file)) >= len(sent) }, "every event in the file")
	testkit.Eventually(t, func() bool { e, _, _ := api.snapshot(); return len(e) >= len(sent) }, "every event at the Segment API")
	fromFile := readNDJSON(t, file)
	fromAPI, key, sentAt := api.snapshot()
	for _, e := range api.refused() {
		t.Errorf("the Segment API refused a request: %s", e)
	}
	if len(fromFile) != len(sent) || len(fromAPI) != len(sent) {
		t.Errorf("%d events in the file and %d at the Segment API, want the %d sent", len(fromFile), len(fromAPI), len(sent))
	}
	for run, r := range sdks {
		delivered := r.delivered(t)
		checkNodeEvents(t, "file", run, libVersion, delivered, fromFile)
		checkNodeEvents(t, "segment", run, libVersion, delivered, fromAPI)
		for id := range delivered {
			if key[id] != keys[run] {
				t.Errorf("segment: %s arrived under write key %q, want %q", id, key[id], keys[run])
			}
			at, err := time.Parse(time.RFC3339Nano, sentAt[id])
			received, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(fromAPI[id]["receivedAt"]))
			if err != nil || at.Before(received) || time.Since(at) > time.Minute {
				t.Errorf("segment: %s went in a batch with sentAt %q, want the time of sending (after receivedAt %v)", id, sentAt[id], received)
			}
		}
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d after SIGTERM: %s", code, p.stderr)
	}
}

// TestAnalyticsNodeUnderWriteKeys: with --write-key set, the SDK with an
// unknown key reports its events failed with the 401 and none is stored,
// while the SDK with the accepted key delivers all of its own.
func TestAnalyticsNodeUnderWriteKeys(t *testing.T) {
	t.Parallel()
	node, libVersion := findNodeSDK(t)
	file := filepath.Join(t.TempDir(), "events.ndjson")
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--flush-interval", "20ms",
		"--write-key", "wk-accepted", "--destination", "file=file://"+file)

	wrong := startNodeSDK(t, node, p.url(), "wk-unknown", "wrong")
	if code := wrong.wait(t, 20*time.Second); code == 0 {
		t.Fatalf("send.mjs with an unknown write key exited 0: %s", wrong.stderr.String())
	}
	if !strings.Contains(wrong.stderr.String(), "[401]") {
		t.Errorf("the SDK with an unknown write key did not report the 401: %s", wrong.stderr.String())
	}
	if got := wrong.delivered(t); len(got) != 0 {
		t.Errorf("the SDK with an unknown write key reported %d events delivered", len(got))
	}
	m := scrapeMetrics(t, p.url())
	if n := m.must(t, "spillway_request_errors_total", "code", "unauthorized"); n < 1 || int(n) != wrong.requests() {
		t.Errorf("spillway answered %v requests with 401, the SDK made %d", n, wrong.requests())
	}
	for _, ep := range endpointLabels {
		if n := m.must(t, "spillway_events_received_total", "endpoint", ep); n != 0 {
			t.Errorf("spillway stored %v events at %s from an unknown write key", n, ep)
		}
	}

	right := startNodeSDK(t, node, p.url(), "wk-accepted", "right")
	if code := right.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("send.mjs with the accepted write key: exit status %d: %s", code, right.stderr.String())
	}
	delivered := right.delivered(t)
	// The file destination writes in spool order, so once the accepted
	// run's events are there, anything stored before them would be too.
	testkit.Eventually(t, func() bool { return len(readNDJSON(t, file)) >= len(delivered) }, "the accepted run's events in the file")
	fromFile := readNDJSON(t, file)
	if len(fromFile) != len(delivered) {
		t.Errorf("%d events in the file, want only the accepted run's %d", len(fromFile), len(delivered))
	}
	checkNodeEvents(t, "file", "right", libVersion, delivered, fromFile)
}

// TestAnalyticsNodeRetriesThroughASpillwayRestart sends while spillway is
// draining after a SIGTERM (503), then gone, then restarted on the same
// address and spool: the SDK's retries get every event through once, and
// what spillway held before the restart is delivered too.
func TestAnalyticsNodeRetriesThroughASpillwayRestart(t *testing.T) {
	node, libVersion := findNodeSDK(t)
	d := startDraining(t, "3s")

	// The SDK's default of 3 retries spans under a second (analytics-node
	// 2.x backs off from 25 ms to 1 s), less than a drain and a restart.
	r := startNodeSDK(t, node, d.p.url(), "wk-node", "restart", "SDK_MAX_RETRIES=12")
	testkit.Eventually(t, func() bool {
		select {
		case <-d.p.done:
			t.Fatalf("the drain ended before the SDK's first request: %s", r.stderr.String())
		default:
		}
		v, _ := scrapeMetrics(t, d.p.url()).value("spillway_request_errors_total", "code", "unavailable")
		return v >= 1
	}, "a 503 answered to the SDK during the drain")
	select {
	case <-d.p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("spillway did not stop after its 3 s drain: %s", d.p.stderr)
	}
	if r.requests() < 2 {
		t.Fatalf("the SDK made %d requests while spillway was draining, want a retry after the 503: %s", r.requests(), r.stderr.String())
	}
	before := r.requests()

	d.hook.setStatus(200)
	p := startSpillway(t, d.p.addr, nil, d.args...)
	if code := r.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("send.mjs: exit status %d: %s", code, r.stderr.String())
	}
	if r.requests() <= before {
		t.Fatalf("the SDK's success came from no request after the restart: %s", r.stderr.String())
	}
	delivered := r.delivered(t)
	want := len(d.acked) + len(delivered)
	testkit.Eventually(t, func() bool { u, _ := d.hook.Counts(); return u >= want }, "every event at the destination")
	got := map[string]map[string]any{}
	for id := range delivered {
		got[id], _, _ = d.hook.Event(id)
	}
	checkNodeEvents(t, "webhook", "restart", libVersion, delivered, got)
	for _, e := range d.acked {
		if !d.hook.Has(e["messageId"].(string)) {
			t.Errorf("%s, acknowledged before the restart, never arrived", e["messageId"])
		}
	}
	if unique, received := d.hook.Counts(); unique != want || received != want {
		t.Errorf("the webhook received %d events (%d distinct), want each of the %d once", received, unique, want)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d after SIGTERM: %s", code, p.stderr)
	}
}

// TestAnalyticsNodeBatchWithAnEventOverTheLimit: the SDK puts an event over
// --max-event-bytes in one batch with its seven others. analytics-node
// drops a whole batch answered 400, so the 200 must come back: the seven
// reach the destination, the big one is in `dlq list` as too_large with
// its real size, and the SDK made one request.
func TestAnalyticsNodeBatchWithAnEventOverTheLimit(t *testing.T) {
	t.Parallel()
	node, libVersion := findNodeSDK(t)
	file := filepath.Join(t.TempDir(), "events.ndjson")
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--flush-interval", "20ms",
		"--max-event-bytes", "4KiB", "--destination", "file=file://"+file)

	r := startNodeSDK(t, node, p.url(), "wk-node", "big", "SDK_BIG_EVENT_BYTES=6000")
	if code := r.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("send.mjs: exit status %d: %s", code, r.stderr.String())
	}
	if n := r.requests(); n != 1 {
		t.Fatalf("the SDK made %d requests, want its 8 events in one batch: %s", n, r.stderr.String())
	}
	delivered := r.delivered(t)
	var bigID string
	for id, e := range delivered {
		if e["event"] == "Big Event" {
			bigID = id
			delete(delivered, id)
		}
	}
	if bigID == "" {
		t.Fatalf("the SDK did not report the big event sent (it may drop it itself): %s", r.stderr.String())
	}
	testkit.Eventually(t, func() bool { return len(readNDJSON(t, file)) >= len(delivered) }, "the seven events in the file")
	fromFile := readNDJSON(t, file)
	checkNodeEvents(t, "file", "big", libVersion, delivered, fromFile)
	if _, ok := fromFile[bigID]; ok {
		t.Errorf("the event over --max-event-bytes reached the destination")
	}
	dls := listDeadLetters(t, "--addr", p.addr)
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want the big event alone", len(dls))
	}
	d := dls[0]
	var kept string
	if err := json.Unmarshal(d.Event, &kept); err != nil {
		t.Fatalf("the dead letter's event is not the event's beginning as a string: %s", d.Event)
	}
	if d.Reason != "too_large" || d.Size <= 6000 || len(kept) != 4096 || !strings.Contains(kept, `"event":"Big Event"`) {
		t.Errorf("dead letter: reason %q, size %d, %d bytes kept: %.120s", d.Reason, d.Size, len(kept), kept)
	}
	// Only its beginning was kept: a replay would store a string, not the
	// event. It stays until purged.
	if out := runCLI(t, "dlq", "replay", "--addr", p.addr); !strings.Contains(out, "replayed: 0") {
		t.Errorf("replay said %q, want nothing replayed", out)
	}
	if dls := listDeadLetters(t, "--addr", p.addr); len(dls) != 1 {
		t.Errorf("%d dead letters after a replay, want the big event still there", len(dls))
	}
	m := scrapeMetrics(t, p.url())
	if n := m.must(t, "spillway_events_rejected_total", "reason", "too_large"); n != 1 {
		t.Errorf("spillway_events_rejected_total{reason=too_large} = %v, want 1", n)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d after SIGTERM: %s", code, p.stderr)
	}
}
