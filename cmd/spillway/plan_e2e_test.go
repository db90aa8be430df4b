package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
)

// strictPlan requires properties.orderId of Order Completed; loosePlan,
// the fixed plan, does not.
const (
	strictPlan = `{"rules":[{"type":"TRACK","key":"Order Completed","version":1,"jsonSchema":{"properties":{"properties":{"required":["orderId"]}}}}]}`
	loosePlan  = `{"rules":[{"type":"TRACK","key":"Order Completed","version":2,"jsonSchema":{"properties":{"properties":{"properties":{"orderId":{"type":"string"}}}}}}]}`
)

// TestTrackingPlanBlocksReloadsAndReplays: in block mode an event missing
// a required property is dead-lettered as violation and the rest
// delivered; a broken plan sent with SIGHUP is refused and the old one
// kept; the fixed plan is taken, and `dlq replay` re-checks the dead
// letter against it and delivers it.
func TestTrackingPlanBlocksReloadsAndReplays(t *testing.T) {
	planFile := filepath.Join(t.TempDir(), "plan.json")
	writePlanFile := func(s string) {
		t.Helper()
		if err := os.WriteFile(planFile, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writePlanFile(strictPlan)
	hook := newSink(t)
	p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--flush-interval", "20ms",
		"--tracking-plan", planFile, "--tracking-plan-mode", "block", "--tracking-plan-unplanned", "allow",
		"--destination", "hook="+hook.URL)
	send := func(id string, props map[string]any) {
		t.Helper()
		evs := []map[string]any{{"type": "track", "event": "Order Completed", "userId": "u", "messageId": id, "properties": props}}
		if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", evs); err != nil || code != 200 {
			t.Fatalf("batch: %d %v", code, err)
		}
	}
	send("ok-1", map[string]any{"orderId": "o1"})
	send("bad-1", map[string]any{"revenue": 1})
	testkit.Eventually(t, func() bool { return hook.Has("ok-1") }, "the good event")
	dls := listDeadLetters(t, "--addr", p.addr)
	if len(dls) != 1 || dls[0].Reason != spool.ReasonViolation || dls[0].Error != "properties.orderId is required" ||
		!strings.Contains(string(dls[0].Violations), `"type":"Required"`) {
		t.Fatalf("dead letters %+v", dls)
	}

	// A broken plan is refused at reload: the strict one still blocks.
	writePlanFile(`{"rules":[{"type":"TRACK"`)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, func() bool {
		return strings.Contains(p.stderr.String(), "reload tracking plan failed; keeping the previous one")
	}, "the refusal logged")
	send("bad-2", map[string]any{"revenue": 2})
	if n := len(listDeadLetters(t, "--addr", p.addr, "--reason", "violation")); n != 2 {
		t.Fatalf("%d violations after a broken plan was refused, want 2", n)
	}
	// Nothing replays while the strict plan is in force.
	if out := runCLI(t, "dlq", "replay", "--addr", p.addr); !strings.Contains(out, "replayed: 0") {
		t.Fatalf("replay under the strict plan said %q", out)
	}

	writePlanFile(loosePlan)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, func() bool {
		return strings.Contains(p.stderr.String(), "reloaded tracking plan")
	}, "the fixed plan taken")
	send("ok-2", map[string]any{"revenue": 3})
	testkit.Eventually(t, func() bool { return hook.Has("ok-2") }, "an event the fixed plan accepts")
	if out := runCLI(t, "dlq", "replay", "--addr", p.addr); !strings.Contains(out, "replayed: 2") {
		t.Fatalf("replay under the fixed plan said %q", out)
	}
	testkit.Eventually(t, func() bool { return hook.Has("bad-1") && hook.Has("bad-2") }, "the replayed events")
	if dls := listDeadLetters(t, "--addr", p.addr); len(dls) != 0 {
		t.Errorf("%d dead letters left after the replay", len(dls))
	}
	m := scrapeMetrics(t, p.url())
	if n := m.must(t, "spillway_tracking_plan_violations_total", "type", "Required", "event", "Order Completed"); n != 2 {
		t.Errorf("violations{Required,Order Completed} = %v, want 2", n)
	}
	if out := runCLI(t, "status", "--addr", p.addr); !strings.Contains(out, "tracking plan violations: 2 (Required 2)") {
		t.Errorf("status does not show the violations:\n%s", out)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}
}

func TestABrokenPlanIsAUsageError(t *testing.T) {
	planFile := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(planFile, []byte(`{"rules":[{"type":"TRACK","key":"","jsonSchema":{}}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := run(t.Context(), []string{"run", "--spool-dir", t.TempDir(), "--tracking-plan", planFile}, &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "--tracking-plan") {
		t.Errorf("exit %d: %s", code, errOut.String())
	}
}

func TestPlanCheck(t *testing.T) {
	dir := t.TempDir()
	planFile, events := filepath.Join(dir, "plan.json"), filepath.Join(dir, "events.ndjson")
	if err := os.WriteFile(planFile, []byte(strictPlan), 0o600); err != nil {
		t.Fatal(err)
	}
	lines := `{"type":"track","event":"Order Completed","messageId":"m1","properties":{"orderId":"o"}}
{"type":"track","event":"Order Completed","messageId":"m2","properties":{}}

{"type":"track","event":"Cart Viewed","messageId":"m3"}
`
	if err := os.WriteFile(events, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run(t.Context(), []string{"plan", "check", planFile}, &out, &errOut); code != 0 {
		t.Fatalf("plan check of a good plan: exit %d: %s", code, errOut.String())
	}
	out.Reset()
	if code := run(t.Context(), []string{"plan", "check", planFile, events}, &out, &errOut); code != 1 {
		t.Fatalf("plan check with a bad event: exit %d, want 1: %s", code, errOut.String())
	}
	var got []planCheckLine
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var r planCheckLine
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		got = append(got, r)
	}
	if len(got) != 3 || len(got[0].Violations) != 0 || got[1].Line != 2 || len(got[1].Violations) != 1 ||
		got[1].Violations[0].Field != "properties.orderId" || got[2].Line != 4 || got[2].Violations[0].Type != "Unplanned" {
		t.Errorf("plan check printed %s", out.String())
	}
	out.Reset()
	if code := run(t.Context(), []string{"plan", "check", "--unplanned", "allow", planFile, events}, &out, &errOut); code != 1 ||
		strings.Contains(out.String(), "Unplanned") {
		t.Errorf("--unplanned allow: exit %d: %s", code, out.String())
	}
	if err := os.WriteFile(planFile, []byte(`{"rules":`), 0o600); err != nil {
		t.Fatal(err)
	}
	errOut.Reset()
	if code := run(t.Context(), []string{"plan", "check", planFile}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "not a tracking plan") {
		t.Errorf("a broken plan: exit %d: %s", code, errOut.String())
	}
}
