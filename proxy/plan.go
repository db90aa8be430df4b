package proxy

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/internal/plan"
	"github.com/spillwayhq/spillway/spool"
)

// planState is the tracking plan in force and what its violations lead
// to. It is swapped whole by a reload.
type planState struct {
	p               *plan.Plan
	mode, unplanned plan.Action
}

// codeViolation labels the events a tracking plan in block mode
// dead-lettered.
const codeViolation = "violation"

// loadPlan loads the tracking plan the config names; nil for none or
// --tracking-plan-mode=off.
func (c Config) loadPlan() (*planState, error) {
	mode, err := plan.ParseMode(c.TrackingPlanMode)
	if err != nil {
		return nil, fmt.Errorf("--tracking-plan-mode: %w", err)
	}
	unplanned, err := plan.ParseUnplanned(c.TrackingPlanUnplanned)
	if err != nil {
		return nil, fmt.Errorf("--tracking-plan-unplanned: %w", err)
	}
	if c.TrackingPlan == "" || mode == plan.Ignore {
		return nil, nil
	}
	p, err := plan.Load(c.TrackingPlan)
	if err != nil {
		return nil, fmt.Errorf("--tracking-plan: %w", err)
	}
	return &planState{p: p, mode: mode, unplanned: unplanned}, nil
}

// reloadPlan rereads --tracking-plan. A plan that does not load is
// refused, and the one in force stays, logged: a reload must never leave
// the proxy without the plan it had.
func (s *Server) reloadPlan() {
	if s.cfg.TrackingPlan == "" {
		return
	}
	ps, err := s.cfg.loadPlan()
	if err != nil {
		s.log.LogAttrs(context.Background(), slog.LevelError, "reload tracking plan failed; keeping the previous one",
			slog.Any(logKeyErr, err))
		return
	}
	s.setPlan(ps)
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "reloaded tracking plan",
		slog.String("file", s.cfg.TrackingPlan), slog.Int("rules", ps.p.Rules()))
}

// setPlan puts ps in force, its event names' series at 0 first.
func (s *Server) setPlan(ps *planState) {
	if ps != nil {
		for _, e := range append(ps.p.Events(), plan.Unplanned) {
			for _, t := range plan.Types() {
				s.m.violations.WithLabelValues(t, e)
			}
		}
	}
	s.pp.plan.Store(ps)
}

// found is a violation to count once its event is stored.
type found struct{ typ, label string }

// checkPlan checks the event written to in.out from start against the
// plan. A flagged event is rewritten in place with context.violations; a
// blocked one is reported as its violations' JSON, for its dead letter.
func (pp *parser) checkPlan(in *ingest, ps *planState, start int) (blocked []plan.Violation, err error) {
	jp, _ := pp.jsonParsers.Get().(*fastjson.Parser)
	if jp == nil {
		jp = new(fastjson.Parser)
	}
	defer pp.jsonParsers.Put(jp)
	v, err := jp.ParseBytes(in.out[start:])
	if err != nil {
		return nil, fmt.Errorf("reparse stored event: %w", err) // written by us: a bug
	}
	vs, action := ps.check(v)
	if len(vs) == 0 {
		return nil, nil
	}
	typ, name := plan.Subject(v)
	label := ps.p.Label(typ, name)
	for _, x := range vs {
		in.found = append(in.found, found{x.Type, label})
	}
	switch action {
	case plan.Block:
		return vs, nil
	case plan.Flag:
		end := len(in.out)
		in.out = appendFlagged(in.out, v, plan.AppendJSON(nil, vs))
		in.out = in.out[:start+copy(in.out[start:], in.out[end:])]
	}
	return nil, nil
}

// check returns an event's violations and what they lead to.
func (ps *planState) check(v *fastjson.Value) ([]plan.Violation, plan.Action) {
	typ, name := plan.Subject(v)
	vs, _ := ps.p.Check(plan.FromFastJSON(v), typ, name, ps.unplanned != plan.Ignore)
	return vs, plan.Verdict(vs, ps.mode, ps.unplanned)
}

// appendFlagged appends the event v with violations (a JSON array) as its
// context.violations, replacing any it had. A context that is not an
// object, which no SDK sends, is replaced.
func appendFlagged(out []byte, v *fastjson.Value, violations []byte) []byte {
	o, _ := v.Object()
	out = append(out, '{')
	first, hasContext := true, false
	writeViolations := func(out []byte, ctxObj *fastjson.Object) []byte {
		out = append(out, '{')
		cfirst := true
		if ctxObj != nil {
			ctxObj.Visit(func(k []byte, c *fastjson.Value) {
				if string(k) == "violations" {
					return
				}
				out = appendKey(out, &cfirst, k)
				out = appendValue(out, c)
			})
		}
		out = appendKey(out, &cfirst, []byte("violations"))
		out = append(out, violations...)
		return append(out, '}')
	}
	o.Visit(func(k []byte, c *fastjson.Value) {
		out = appendKey(out, &first, k)
		if string(k) != "context" {
			out = appendValue(out, c)
			return
		}
		hasContext = true
		ctxObj, _ := c.Object()
		out = writeViolations(out, ctxObj)
	})
	if !hasContext {
		out = appendKey(out, &first, []byte("context"))
		out = writeViolations(out, nil)
	}
	return append(out, '}')
}

// blockedDeadLetter is the dead letter of an event the plan blocks.
func blockedDeadLetter(bt *batchTop, wk string, vs []plan.Violation) spool.DeadLetter {
	return spool.DeadLetter{
		Reason:     spool.ReasonViolation,
		Error:      vs[0].Description,
		At:         bt.now,
		WriteKey:   wk,
		Violations: plan.AppendJSON(nil, vs),
	}
}

// recheck is the replay of a dead letter: one the plan blocked is checked
// against the plan in force now, so that fixing the plan and replaying
// works. It goes back to the queue unless the plan still blocks it,
// flagged if the plan flags it. Any other dead letter goes back as it is.
func (s *Server) recheck(d *spool.DeadLetter) bool {
	if d.Reason != spool.ReasonViolation {
		return true
	}
	ps := s.pp.plan.Load()
	if ps == nil {
		return true // no plan in force, or it is off: nothing blocks it
	}
	var jp fastjson.Parser
	v, err := jp.ParseBytes(d.Event)
	if err != nil || v.Type() != fastjson.TypeObject {
		return false // not what the proxy stores: leave it for a person
	}
	vs, action := ps.check(v)
	switch action {
	case plan.Block:
		return false
	case plan.Flag:
		d.Event = appendFlagged(nil, v, plan.AppendJSON(nil, vs))
	}
	return true
}
