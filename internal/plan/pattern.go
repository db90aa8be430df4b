package plan

import (
	"regexp"
	"regexp/syntax"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// compilePattern compiles a schema's "pattern". Most patterns of a plan
// give an id's shape: anchored at both ends, literals and ASCII classes,
// each repeat followed by what it cannot match (`^prod_[0-9a-f]+$`).
// Such a pattern is matched in one pass over the bytes; Go's regexp took
// 3% of spillway's CPU in flag mode at full load to find the same answer.
// Any other pattern is Go's regexp's.
func compilePattern(s string) (jsonschema.Regexp, error) {
	re, err := regexp.Compile(s)
	if err != nil {
		return nil, err
	}
	if p, ok := simplePattern(s); ok {
		return p, nil
	}
	return re, nil
}

// shapePattern matches its steps in order, each as many times as it can:
// simplePattern takes only patterns for which that is the one way to
// match.
type shapePattern struct {
	text  string
	steps []shapeStep
}

type shapeStep struct {
	set      [2]uint64 // the ASCII bytes it matches
	min, max int       // max -1: no bound
}

func (st *shapeStep) has(c byte) bool { return c < 128 && st.set[c>>6]&(1<<(c&63)) != 0 }

func (p *shapePattern) String() string { return p.text }

func (p *shapePattern) MatchString(s string) bool {
	i := 0
	for k := range p.steps {
		st := &p.steps[k]
		n := 0
		for n != st.max && i < len(s) && st.has(s[i]) {
			n++
			i++
		}
		if n < st.min {
			return false
		}
	}
	return i == len(s)
}

// simplePattern returns s as a shapePattern, if it is one: ^, then
// ASCII literals and ASCII classes, each once or repeated, then $. A step
// repeated a varying number of times must be followed by a step of at
// least one byte it cannot match, or by the end.
func simplePattern(s string) (*shapePattern, bool) {
	re, err := syntax.Parse(s, syntax.Perl)
	if err != nil || re.Op != syntax.OpConcat || len(re.Sub) < 2 {
		return nil, false
	}
	subs := re.Sub
	if subs[0].Op != syntax.OpBeginText || subs[len(subs)-1].Op != syntax.OpEndText {
		return nil, false
	}
	p := &shapePattern{text: s}
	for _, sub := range subs[1 : len(subs)-1] {
		min, max := 1, 1
		switch sub.Op {
		case syntax.OpStar:
			min, max, sub = 0, -1, sub.Sub[0]
		case syntax.OpPlus:
			min, max, sub = 1, -1, sub.Sub[0]
		case syntax.OpQuest:
			min, max, sub = 0, 1, sub.Sub[0]
		case syntax.OpRepeat:
			min, max, sub = sub.Min, sub.Max, sub.Sub[0]
		}
		if sub.Flags&syntax.FoldCase != 0 {
			return nil, false
		}
		switch {
		case sub.Op == syntax.OpLiteral && (min == 1 && max == 1 || len(sub.Rune) == 1):
			for _, r := range sub.Rune {
				st := shapeStep{min: min, max: max}
				if !st.add(r, r) {
					return nil, false
				}
				p.steps = append(p.steps, st)
			}
		case sub.Op == syntax.OpCharClass:
			st := shapeStep{min: min, max: max}
			for i := 0; i+1 < len(sub.Rune); i += 2 {
				if !st.add(sub.Rune[i], sub.Rune[i+1]) {
					return nil, false
				}
			}
			p.steps = append(p.steps, st)
		default:
			return nil, false
		}
	}
	for k, st := range p.steps {
		if st.min == st.max || k == len(p.steps)-1 {
			continue
		}
		next := p.steps[k+1]
		if next.min == 0 || st.set[0]&next.set[0] != 0 || st.set[1]&next.set[1] != 0 {
			return nil, false
		}
	}
	return p, true
}

// add puts the runes lo to hi in the step's set; false if any is not ASCII.
func (st *shapeStep) add(lo, hi rune) bool {
	if lo < 0 || hi > 127 {
		return false
	}
	for c := lo; c <= hi; c++ {
		st.set[c>>6] |= 1 << (c & 63)
	}
	return true
}
