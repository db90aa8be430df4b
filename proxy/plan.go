package proxy

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/internal/jsontext"
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
func (pp *parser) checkPlan(in *ingest, ps *planState, start int, f *fields) (blocked []plan.Violation, err error) {
	vs, action, label := ps.check(in.out[start:])
	if len(vs) == 0 {
		return nil, nil
	}
	for _, x := range vs {
		in.found = append(in.found, found{x.Type, label})
	}
	switch action {
	case plan.Block:
		return vs, nil
	case plan.Flag:
		end := len(in.out)
		mark := len(in.scratch)
		in.scratch = appendViolations(in.scratch, vs)
		violations := in.scratch[mark:]
		if insertViolations(in, f, violations) {
			in.scratch = in.scratch[:mark]
			return nil, nil
		}
		if out, ok := spliceViolations(in.out, in.out[start:end], violations); ok {
			in.out = out
		} else {
			jp, _ := pp.jsonParsers.Get().(*fastjson.Parser)
			if jp == nil {
				jp = new(fastjson.Parser)
			}
			defer pp.jsonParsers.Put(jp)
			v, err := jp.ParseBytes(in.out[start:end])
			if err != nil {
				return nil, fmt.Errorf("reparse stored event: %w", err) // written by us: a bug
			}
			in.out = appendFlagged(in.out, v, violations)
		}
		in.out = in.out[:start+copy(in.out[start:], in.out[end:])]
		in.scratch = in.scratch[:mark]
	}
	return nil, nil
}

// appendViolations appends vs as a JSON array, as plan.AppendJSON does,
// without its allocations.
func appendViolations(b []byte, vs []plan.Violation) []byte {
	b = append(b, '[')
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"type":`...)
		b = appendString(b, []byte(v.Type))
		b = append(b, `,"field":`...)
		b = appendString(b, []byte(v.Field))
		b = append(b, `,"description":`...)
		b = appendString(b, []byte(v.Description))
		b = append(b, '}')
	}
	return append(b, ']')
}

// spliceViolations appends event, as the proxy stores it (compact, each
// key once), with violations as the last member of its context: written
// into the bytes, where appendFlagged writes the whole event again. false,
// with out as it was, for an event whose context is not an object or
// holds violations already: appendFlagged's work.
func spliceViolations(out, event, violations []byte) ([]byte, bool) {
	i := 1 // past '{'
	for i < len(event) && event[i] != '}' {
		keyEnd, ok := jsontext.ValueEnd(event, i)
		if !ok || keyEnd >= len(event) || event[keyEnd] != ':' {
			return out, false
		}
		key := event[i:keyEnd]
		vStart := keyEnd + 1
		vEnd, ok := jsontext.ValueEnd(event, vStart)
		if !ok {
			return out, false
		}
		if string(key) == `"context"` {
			if event[vStart] != '{' || hasMember(event[vStart:vEnd], `"violations"`) {
				return out, false
			}
			out = append(out, event[:vEnd-1]...)
			if vEnd-vStart > 2 {
				out = append(out, ',')
			}
			out = append(out, `"violations":`...)
			out = append(out, violations...)
			return append(out, event[vEnd-1:]...), true
		}
		i = vEnd
		if i < len(event) && event[i] == ',' {
			i++
		}
	}
	if i != len(event)-1 {
		return out, false
	}
	out = append(out, event[:i]...)
	if i > 1 {
		out = append(out, ',')
	}
	out = append(out, `"context":{"violations":`...)
	out = append(out, violations...)
	return append(out, '}', '}'), true
}

// insertViolations puts violations last in the context of the event that
// ends in.out, where the fast path saw its context object end. false,
// with in.out as it was, where that is not known or its context may hold
// violations already: spliceViolations' work.
func insertViolations(in *ingest, f *fields, violations []byte) bool {
	if f.contextEnd == 0 {
		return false
	}
	object := in.out[f.contextAt:f.contextEnd]
	if bytes.Contains(object, []byte(`"violations"`)) {
		return false // perhaps only in a string: the slow path tells
	}
	key := `,"violations":`
	if len(object) == 2 {
		key = key[1:]
	}
	at, n := f.contextEnd-1, len(key)+len(violations)
	old := len(in.out)
	in.out = slices.Grow(in.out, n)[:old+n]
	copy(in.out[at+n:], in.out[at:old])
	copy(in.out[at+copy(in.out[at:], key):], violations)
	return true
}

// hasMember reports whether the compact object obj has the key (quoted).
func hasMember(obj []byte, key string) bool {
	for i := 1; i < len(obj) && obj[i] != '}'; {
		keyEnd, ok := jsontext.ValueEnd(obj, i)
		if !ok || keyEnd >= len(obj) {
			return true // unreadable: let the slow path judge
		}
		if string(obj[i:keyEnd]) == key {
			return true
		}
		vEnd, ok := jsontext.ValueEnd(obj, keyEnd+1)
		if !ok {
			return true
		}
		i = vEnd
		if i < len(obj) && obj[i] == ',' {
			i++
		}
	}
	return false
}

// check returns the violations of an event as the proxy stores it, what
// they lead to, and the event's label for the violations' metric.
func (ps *planState) check(event []byte) (vs []plan.Violation, action plan.Action, label string) {
	typ, name := plan.SubjectJSON(event)
	vs, _ = ps.p.CheckJSON(event, typ, name, ps.unplanned != plan.Ignore)
	if len(vs) == 0 {
		return nil, plan.Ignore, ""
	}
	return vs, plan.Verdict(vs, ps.mode, ps.unplanned), ps.p.Label(typ, name)
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
		Reason:   spool.ReasonViolation,
		Error:    vs[0].Description,
		At:       bt.now,
		WriteKey: wk,
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
	vs, action, _ := ps.check(d.Event)
	switch action {
	case plan.Block:
		return false
	case plan.Flag:
		d.Event = appendFlagged(nil, v, plan.AppendJSON(nil, vs))
	}
	return true
}
