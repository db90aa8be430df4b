package proxy

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/spool"
)

const testPlan = `{"rules":[
 {"type":"TRACK","key":"Order Completed","version":1,"jsonSchema":{"properties":{"properties":{
   "required":["orderId"],
   "properties":{"orderId":{"type":"string"},"currency":{"enum":["EUR","USD"]},"email":{"format":"email"}}}}}}]}`

func writePlan(t *testing.T, plan string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(path, []byte(plan), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The events of TestTrackingPlanModes, by index in the batch.
const (
	planGood      = `{"type":"track","userId":"u","event":"Order Completed","properties":{"orderId":"o1","currency":"EUR"}}`
	planRequired  = `{"type":"track","userId":"u","event":"Order Completed","properties":{"currency":"EUR"}}`
	planTyped     = `{"type":"track","userId":"u","event":"Order Completed","properties":{"orderId":7,"email":"nope"}}`
	planUnplanned = `{"type":"track","userId":"u","event":"Cart Viewed","context":{"ip":"1.2.3.4"}}`
)

func TestTrackingPlanModes(t *testing.T) {
	body := `{"batch":[` + planGood + `,` + planRequired + `,` + planTyped + `,` + planUnplanned + `]}`
	tests := []struct {
		scenario         string
		mode, unplanned  string
		flagged, blocked []int // indexes in the batch
	}{
		{scenario: "flag mode delivers every event, the bad ones with context.violations",
			mode: "flag", unplanned: "flag", flagged: []int{1, 2, 3}},
		{scenario: "block mode dead-letters the bad ones and flags the unplanned one",
			mode: "block", unplanned: "flag", flagged: []int{3}, blocked: []int{1, 2}},
		{scenario: "unplanned events are allowed untouched",
			mode: "flag", unplanned: "allow", flagged: []int{1, 2}},
		{scenario: "unplanned events are blocked while the others are flagged",
			mode: "flag", unplanned: "block", flagged: []int{1, 2}, blocked: []int{3}},
		{scenario: "off checks nothing", mode: "off", unplanned: "block"},
	}
	wantViolations := map[int]string{
		1: `[{"type":"Required","field":"properties.orderId","description":"properties.orderId is required"}]`,
		2: `[{"type":"Type","field":"properties.orderId","description":"properties.orderId must be string, not number"},` +
			`{"type":"Format","field":"properties.email","description":"properties.email must be a valid email"}]`,
		3: `[{"type":"Unplanned","field":"event","description":"\"Cart Viewed\" is not in the tracking plan"}]`,
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.TrackingPlan = writePlan(t, testPlan)
			cfg.TrackingPlanMode, cfg.TrackingPlanUnplanned = tt.mode, tt.unplanned
			h := newHarness(t, cfg)
			a := h.post(t, "/v1/batch", body)
			var rejected []string
			for _, i := range tt.blocked {
				var first []map[string]string
				_ = json.Unmarshal([]byte(wantViolations[i]), &first)
				rejected = append(rejected, `{"index":`+string(rune('0'+i))+`,"reason":`+mustJSON(first[0]["description"])+`}`)
			}
			want := `{"success":true}`
			if len(rejected) > 0 {
				want = `{"success":true,"rejected":[` + strings.Join(rejected, ",") + `]}`
			}
			if a.status != http.StatusOK || string(a.body) != want {
				t.Fatalf("answer %d %s\nwant 200 %s", a.status, a.body, want)
			}
			c := h.sp.onlyCall(t)
			if len(c.events) != 4-len(tt.blocked) || len(c.dead) != len(tt.blocked) {
				t.Fatalf("%d stored, %d dead letters", len(c.events), len(c.dead))
			}
			stored := 0
			for i := range 4 {
				if contains(tt.blocked, i) {
					continue
				}
				e := decode(t, c.events[stored].Data)
				stored++
				ctx, _ := e["context"].(map[string]any)
				got, _ := json.Marshal(ctx["violations"])
				var want any
				_ = json.Unmarshal([]byte(wantViolations[i]), &want)
				if contains(tt.flagged, i) != (ctx["violations"] != nil) || (ctx["violations"] != nil && !reflect.DeepEqual(ctx["violations"], want)) {
					t.Errorf("event %d stored with violations %s", i, got)
				}
				if i == 3 && ctx["ip"] != "1.2.3.4" {
					t.Errorf("event 3 lost its own context: %v", ctx)
				}
			}
			for k, i := range tt.blocked {
				d := c.dead[k]
				if d.Reason != spool.ReasonViolation || string(d.Violations) != wantViolations[i] || !strings.Contains(d.Error, "properties.orderId") && i != 3 {
					t.Errorf("dead letter %d = %+v (%s)", i, d, d.Violations)
				}
			}
			if got := testutil.ToFloat64(h.s.m.rejected["violation"]); got != float64(len(tt.blocked)) {
				t.Errorf("rejected{violation} = %v, want %d", got, len(tt.blocked))
			}
			total := 0.0
			for _, i := range append(append([]int{}, tt.flagged...), tt.blocked...) {
				total += float64(strings.Count(wantViolations[i], `"type"`))
			}
			if got := testutil.CollectAndCount(h.s.m.violations); tt.mode != "off" && got == 0 {
				t.Errorf("no violation series created")
			}
			if got := sumCounter(t, h.s.m.violations); got != total {
				t.Errorf("violations counted %v, want %v", got, total)
			}
			if tt.unplanned != "allow" && tt.mode != "off" {
				if got := testutil.ToFloat64(h.s.m.violations.WithLabelValues("Unplanned", "unplanned")); got != 1 {
					t.Errorf("violations{Unplanned,unplanned} = %v", got)
				}
				if got := testutil.ToFloat64(h.s.m.violations.WithLabelValues("Required", "Order Completed")); got != 1 {
					t.Errorf("violations{Required,Order Completed} = %v", got)
				}
			}
		})
	}
	t.Run("with --strict a blocked event refuses the request", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.TrackingPlan, cfg.TrackingPlanMode, cfg.Strict = writePlan(t, testPlan), "block", true
		h := newHarness(t, cfg)
		a := h.post(t, "/v1/batch", body)
		if a.status != http.StatusBadRequest || !strings.Contains(string(a.body), `"code":"invalid_event","message":"event 1: properties.orderId is required"`) {
			t.Errorf("answer %d %s", a.status, a.body)
		}
		h.sp.wantNoCalls(t)
	})
}

func contains(s []int, i int) bool {
	for _, x := range s {
		if x == i {
			return true
		}
	}
	return false
}

// sumCounter adds up every series of vec.
func sumCounter(t *testing.T, vec *prometheus.CounterVec) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1024)
	vec.Collect(ch)
	close(ch)
	sum := 0.0
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		sum += pb.GetCounter().GetValue()
	}
	return sum
}

// TestTailShowsViolations: the live tail gives each event's violations,
// a flagged one's from its context.violations, a blocked one's beside it.
func TestTailShowsViolations(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TrackingPlan, cfg.TrackingPlanUnplanned = writePlan(t, testPlan), "block"
	h := newHarness(t, cfg)
	h.do(t, http.MethodGet, "/admin/events", nil) // start recording
	if a := h.post(t, "/v1/batch", `{"batch":[`+planGood+`,`+planRequired+`,`+planUnplanned+`]}`); a.status != http.StatusOK {
		t.Fatalf("answer %d %s", a.status, a.body)
	}
	var page TailPage
	if err := json.Unmarshal(h.do(t, http.MethodGet, "/admin/events", nil).body, &page); err != nil || len(page.Events) != 3 {
		t.Fatalf("page %+v: %v", page, err)
	}
	want := []struct{ violation, invalid string }{
		{"", ""},
		{"properties.orderId is required", ""},
		{`"Cart Viewed" is not in the tracking plan`, `"Cart Viewed" is not in the tracking plan`},
	}
	for i, e := range page.Events {
		var vs []map[string]string
		_ = json.Unmarshal(e.Violations, &vs)
		got := ""
		if len(vs) > 0 {
			got = vs[0]["description"]
		}
		if got != want[i].violation || e.Invalid != want[i].invalid {
			t.Errorf("event %d: violations %s, invalid %q", i, e.Violations, e.Invalid)
		}
	}
}

// TestSplicedViolationsAreTheRewrittenOnes: writing context.violations
// into the stored bytes gives the event appendFlagged writes whole.
func TestSplicedViolationsAreTheRewrittenOnes(t *testing.T) {
	violations := []byte(`[{"type":"Required","field":"a","description":"a is \"required\""}]`)
	for _, event := range []string{
		`{"type":"track","context":{"ip":"1.2.3.4","page":{"a":[1,{"b":"}"}]}},"x":"a\"b,c"}`,
		`{"type":"track","context":{}}`,
		`{"type":"track","x":{"context":1}}`,
		`{"context":{"a":1},"type":"track"}`,
		`{"type":"track","context":{"violations":[],"a":1}}`,
		`{"type":"track","context":"text"}`,
		`{}`,
	} {
		v, err := fastjson.Parse(event)
		if err != nil {
			t.Fatal(err)
		}
		want := appendFlagged(nil, v, violations)
		got, ok := spliceViolations([]byte("p"), []byte(event), violations)
		if !ok {
			if string(got) != "p" {
				t.Errorf("%s: declined, with out changed to %s", event, got)
			}
			continue
		}
		var g, w any
		if json.Unmarshal(got[1:], &g) != nil || json.Unmarshal(want, &w) != nil || !reflect.DeepEqual(g, w) {
			t.Errorf("%s: spliced %s\nrewritten %s", event, got[1:], want)
		}
	}
}
