package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/forwarders"
	"github.com/spillwayhq/spillway/internal/plan"
	"github.com/spillwayhq/spillway/internal/privacy"
)

// contractFlags registers the flags of the data contracts enforced at the
// edge: the tracking plan, and the privacy rules applied before an event
// is stored.
func contractFlags(fs *flag.FlagSet, c *serverConfig) {
	fs.StringVar(&c.proxy.TrackingPlan, "tracking-plan", "", "tracking plan file (the rules of Segment's Public API export) every event is checked against; reread on SIGHUP")
	fs.StringVar(&c.proxy.TrackingPlanMode, "tracking-plan-mode", "flag", "what breaking the plan leads to: flag (delivered with context.violations), block (dead-lettered as violation) or off")
	fs.StringVar(&c.proxy.TrackingPlanUnplanned, "tracking-plan-unplanned", "flag", "what a track event the plan does not name leads to: allow, flag or block")
	fs.Var((*stringList)(&c.proxy.DropFields), "drop-field", "comma list of event fields removed before storing, e.g. context.ip,properties.*_token; repeatable (per destination: ?drop=)")
	fs.Var((*stringList)(&c.proxy.HashFields), "hash-field", "comma list of event fields replaced by their hex HMAC-SHA256 under --hash-key-file before storing; repeatable (per destination: ?hash=)")
	fs.StringVar(&c.proxy.IP, "ip", "keep", "context.ip before storing: keep, truncate (IPv4 /24, IPv6 /48) or drop (per destination: ?ip=)")
	fs.StringVar(&c.proxy.HashKeyFile, "hash-key-file", "", "file holding the key of --hash-field and of destinations' hash= (its content, white space trimmed)")
}

// configureContracts gives the destinations the hash key and checks their
// privacy rules, so that a hash= without --hash-key-file is a usage error.
func configureContracts(c *serverConfig, dests []forwarders.Destination) error {
	var key []byte
	if c.proxy.HashKeyFile != "" {
		var err error
		if key, err = privacy.LoadKey(c.proxy.HashKeyFile); err != nil {
			return fmt.Errorf("--hash-key-file: %w", err)
		}
	}
	for i := range dests {
		dests[i].HashKey = key
		if _, err := dests[i].Privacy(); err != nil {
			return fmt.Errorf("--destination: %w", err)
		}
	}
	return nil
}

const planUsage = "usage: spillway plan check [--unplanned allow|flag|block] FILE [EVENTS.ndjson]"

// runPlan is `spillway plan check FILE [EVENTS.ndjson]`: it loads a
// tracking plan as the server would and, given events (one JSON object a
// line, as the SDKs send them or as spillway stores them), prints each
// one's violations, so that a team tests its plan in CI before rolling it
// out. Exit status 0: the plan loads and no event breaks it; 1: some
// event does; 2: the plan does not load, or a usage error.
func runPlan(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprintln(stderr, planUsage)
		return 2
	}
	fs := flag.NewFlagSet("spillway plan check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	unplannedFlag := fs.String("unplanned", "flag", "what a track event the plan does not name is: allow (no violation), flag or block (a violation of type Unplanned)")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	unplanned, err := plan.ParseUnplanned(*unplannedFlag)
	if err != nil || fs.NArg() < 1 || fs.NArg() > 2 {
		if err != nil {
			fmt.Fprintf(stderr, "spillway plan check: --unplanned: %v\n", err)
		}
		fmt.Fprintln(stderr, planUsage)
		return 2
	}
	p, err := plan.Load(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "spillway plan check: %v\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "%s: %d rules, %d track events planned\n", fs.Arg(0), p.Rules(), len(p.Events()))
	if fs.NArg() == 1 {
		return 0
	}
	f, err := os.Open(fs.Arg(1))
	if err != nil {
		fmt.Fprintf(stderr, "spillway plan check: %v\n", err)
		return 2
	}
	defer f.Close()
	return checkEvents(ctx, p, unplanned, f, stdout, stderr)
}

// planCheckLine is one line of `spillway plan check`'s output.
type planCheckLine struct {
	Line       int              `json:"line"`
	Type       string           `json:"type,omitempty"`
	Event      string           `json:"event,omitempty"`
	MessageID  string           `json:"messageId,omitempty"`
	Violations []plan.Violation `json:"violations"`
	Error      string           `json:"error,omitempty"`
}

func checkEvents(ctx context.Context, p *plan.Plan, unplanned plan.Action, r io.Reader, stdout, stderr io.Writer) int {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	out := bufio.NewWriter(stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	var jp fastjson.Parser
	status := 0
	for n := 1; sc.Scan() && ctx.Err() == nil; n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		res := planCheckLine{Line: n, Violations: []plan.Violation{}}
		v, err := jp.ParseBytes(line)
		if err != nil || v.Type() != fastjson.TypeObject {
			res.Error = "not a JSON object"
			status = 1
			_ = enc.Encode(res)
			continue
		}
		typ, name := plan.Subject(v)
		res.Type, res.Event, res.MessageID = typ, name, string(v.GetStringBytes("messageId"))
		vs, _ := p.Check(v, typ, name, unplanned != plan.Ignore)
		if len(vs) > 0 {
			res.Violations = vs
			status = 1
		}
		_ = enc.Encode(res)
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(stderr, "spillway plan check: %v\n", err)
		return 2
	}
	return status
}

// describeViolations is the tracking plan's violations of an event, as
// proxy.TailEvent holds them, for a person on one line; as received when
// they are not a list of violations.
func describeViolations(raw json.RawMessage) string {
	var vs []plan.Violation
	if json.Unmarshal(raw, &vs) != nil {
		return string(raw)
	}
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = v.Type + ": " + v.Description
	}
	return strings.Join(parts, "; ")
}

// printViolations prints, under the status table, the tracking plan's
// violations since start by type, from the server's metrics; nothing when
// no plan is loaded.
func printViolations(ctx context.Context, client *adminClient, w io.Writer) error {
	resp, err := client.do(ctx, http.MethodGet, "/metrics", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return fmt.Errorf("read metrics: %w", err)
	}
	fam := fams["spillway_tracking_plan_violations_total"]
	if fam == nil {
		return nil
	}
	byType := map[string]float64{}
	total := 0.0
	for _, m := range fam.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "type" {
				byType[l.GetValue()] += m.GetCounter().GetValue()
			}
		}
		total += m.GetCounter().GetValue()
	}
	var parts []string
	for _, t := range plan.Types() {
		if n := byType[t]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", t, n))
		}
	}
	line := fmt.Sprintf("tracking plan violations: %.0f", total)
	if len(parts) > 0 {
		line += " (" + strings.Join(parts, ", ") + ")"
	}
	_, err = fmt.Fprintln(w, line)
	return err
}
