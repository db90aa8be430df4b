package plan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/internal/jsontext"
	"github.com/spillwayhq/spillway/internal/segment"
)

// Violation types, as context.violations and the metrics name them.
const (
	TypeRequired  = "Required"
	TypeType      = "Type"
	TypeFormat    = "Format"
	TypeEnum      = "Enum"
	TypeUnplanned = "Unplanned"
	TypeOther     = "Other"
)

// Types are the violation types, the bounded label set of the metrics.
func Types() []string {
	return []string{TypeRequired, TypeType, TypeFormat, TypeEnum, TypeUnplanned, TypeOther}
}

// Unplanned is the metric label of a track event the plan does not name.
const Unplanned = "unplanned"

// Violation is one way an event breaks its plan, in the shape analytics
// tools read from context.violations.
type Violation struct {
	Type        string `json:"type"`
	Field       string `json:"field"` // a JSON path: properties.price
	Description string `json:"description"`
}

// Plan is a loaded tracking plan. It is immutable, so safe for concurrent
// use; a reload builds a new one.
type Plan struct {
	common []*rule
	track  map[string]*rule // by event name
	// byName are the page and screen rules that name one, by type then
	// name; all are the rules of a type with an empty key.
	byName map[string]map[string]*rule
	all    map[string]*rule
	events []string
}

type rule struct {
	typ, key string
	version  int
	schema   *jsonschema.Schema
	fast     *fastSchema // nil: the schema needs the library's validation
}

// ruleTypes are the rule types and the event type each constrains.
var ruleTypes = map[string]string{
	"TRACK": segment.Track, "IDENTIFY": segment.Identify, "GROUP": segment.Group,
	"PAGE": segment.Page, "SCREEN": segment.Screen, "COMMON": "",
}

// maxPlanBytes bounds a plan file: Segment caps a plan at 2000 events.
const maxPlanBytes = 64 << 20

// Load reads and compiles the plan in the file at path.
func Load(path string) (*Plan, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Size() > maxPlanBytes {
		return nil, fmt.Errorf("%s is over %d bytes", path, maxPlanBytes)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// fileRule is a rule as the file holds it.
type fileRule struct {
	Type       string          `json:"type"`
	Key        *string         `json:"key"`
	Version    int             `json:"version"`
	JSONSchema json.RawMessage `json:"jsonSchema"`
}

// Parse compiles a plan from its JSON.
func Parse(data []byte) (*Plan, error) {
	var file struct {
		Rules *[]fileRule `json:"rules"`
	}
	d := json.NewDecoder(bytes.NewReader(data))
	if err := d.Decode(&file); err != nil {
		return nil, fmt.Errorf("not a tracking plan: %v", err)
	}
	if file.Rules == nil {
		return nil, errors.New(`not a tracking plan: no "rules" array`)
	}
	p := &Plan{track: map[string]*rule{}, byName: map[string]map[string]*rule{}, all: map[string]*rule{}}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft7)
	// Segment's plans say "format": "email" and mean it, whatever draft.
	c.AssertFormat()
	// Schemas refer to nothing outside the plan: a $ref to a file or URL
	// would make loading depend on the machine.
	c.UseLoader(noLoader{})
	// A plan repeats its patterns (an id's shape in every event that
	// carries the id): each is compiled and held once.
	patterns := map[string]jsonschema.Regexp{}
	c.UseRegexpEngine(func(s string) (jsonschema.Regexp, error) {
		if re, ok := patterns[s]; ok {
			return re, nil
		}
		re, err := compilePattern(s)
		if err != nil {
			return nil, err
		}
		patterns[s] = re
		return re, nil
	})
	for i, fr := range *file.Rules {
		r, err := compileRule(c, i, fr)
		if err != nil {
			return nil, fmt.Errorf("rule %d (%s %q): %w", i, fr.Type, deref(fr.Key), err)
		}
		if err := p.add(r); err != nil {
			return nil, fmt.Errorf("rule %d (%s %q): %w", i, fr.Type, r.key, err)
		}
	}
	for name := range p.track {
		p.events = append(p.events, name)
	}
	slices.Sort(p.events)
	return p, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

type noLoader struct{}

func (noLoader) Load(url string) (any, error) {
	return nil, fmt.Errorf("%s is outside the plan: a rule's schema may refer only to itself", url)
}

func compileRule(c *jsonschema.Compiler, i int, fr fileRule) (*rule, error) {
	evType, ok := ruleTypes[fr.Type]
	if !ok {
		return nil, errors.New("type must be TRACK, IDENTIFY, GROUP, PAGE, SCREEN or COMMON")
	}
	r := &rule{typ: fr.Type, key: deref(fr.Key), version: fr.Version}
	switch {
	case evType == segment.Track && r.key == "":
		return nil, errors.New("a TRACK rule's key is the event name, and must not be empty")
	case (fr.Type == "IDENTIFY" || fr.Type == "GROUP" || fr.Type == "COMMON") && r.key != "":
		return nil, errors.New("key must be empty for this type")
	case len(bytes.TrimSpace(fr.JSONSchema)) == 0 || string(bytes.TrimSpace(fr.JSONSchema)) == "null":
		return nil, errors.New("jsonSchema is missing")
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(fr.JSONSchema))
	if err != nil {
		return nil, fmt.Errorf("jsonSchema: %v", err)
	}
	url := "urn:spillway:plan:rule:" + strconv.Itoa(i)
	if err := c.AddResource(url, doc); err != nil {
		return nil, fmt.Errorf("jsonSchema: %v", err)
	}
	if r.schema, err = c.Compile(url); err != nil {
		return nil, fmt.Errorf("jsonSchema: %v", err)
	}
	r.fast = compileFast(r.schema, "", true)
	return r, nil
}

// add files r. Of two rules for one type and key, the higher version
// wins, as Segment keeps every version of a rule and enforces the latest.
func (p *Plan) add(r *rule) error {
	var slot map[string]*rule
	key := r.key
	switch {
	case r.typ == "COMMON":
		for _, o := range p.common {
			if o.version == r.version {
				return errors.New("a COMMON rule of this version is given twice")
			}
		}
		p.common = append(p.common, r)
		// Only the latest version applies.
		slices.SortFunc(p.common, func(a, b *rule) int { return b.version - a.version })
		p.common = p.common[:1]
		return nil
	case r.typ == "TRACK":
		slot = p.track
	case key == "":
		slot = p.all
		key = r.typ
	default:
		if p.byName[r.typ] == nil {
			p.byName[r.typ] = map[string]*rule{}
		}
		slot = p.byName[r.typ]
	}
	if old := slot[key]; old != nil {
		if old.version == r.version {
			return errors.New("given twice with the same version")
		}
		if old.version > r.version {
			return nil
		}
	}
	slot[key] = r
	return nil
}

// Events are the plan's track event names, sorted: with Unplanned, the
// bounded label set of the metrics.
func (p *Plan) Events() []string { return slices.Clone(p.events) }

// Rules is how many rules apply: for a person checking a plan loaded.
func (p *Plan) Rules() int {
	n := len(p.common) + len(p.track) + len(p.all)
	for _, m := range p.byName {
		n += len(m)
	}
	return n
}

// Label is the metric label of an event: a track event's name if the
// plan names it, Unplanned if not; any other event's type.
func (p *Plan) Label(typ, name string) string {
	if typ != segment.Track {
		return strings.Clone(typ)
	}
	if r, ok := p.track[name]; ok {
		return r.key // the plan's own string: name may be borrowed
	}
	return Unplanned
}

// Check returns the violations of the parsed event v, of type typ and, for
// track, page and screen, name (its "event" or "name"; see Subject).
// unplanned reports a track event with no rule, which holds one violation
// of TypeUnplanned if reportUnplanned.
func (p *Plan) Check(v *fastjson.Value, typ, name string, reportUnplanned bool) (vs []Violation, unplanned bool) {
	return p.check(v.MarshalTo(nil), typ, name, reportUnplanned, true)
}

// CheckJSON is Check of the event's JSON text, which must be valid: the
// proxy checks the events it writes without parsing them again.
func (p *Plan) CheckJSON(event []byte, typ, name string, reportUnplanned bool) (vs []Violation, unplanned bool) {
	return p.check(event, typ, name, reportUnplanned, true)
}

// check is CheckJSON, through the fast walk where a rule allows it if
// fast.
func (p *Plan) check(event []byte, typ, name string, reportUnplanned, fast bool) (vs []Violation, unplanned bool) {
	var r *rule
	switch typ {
	case segment.Track:
		r = p.track[name]
		unplanned = r == nil
	case segment.Identify, segment.Group, segment.Page, segment.Screen:
		rt := strings.ToUpper(typ)
		if r = p.byName[rt][name]; r == nil {
			r = p.all[rt]
		}
	}
	w := walkers.Get().(*walker)
	defer func() {
		w.vs = nil
		clear(w.lists)
		walkers.Put(w)
	}()
	// Each rule's violations in a list of its own, w.lists[k] for the
	// k-th rule that applies (the COMMON ones, then the event's own):
	// the fast ones are walked together, the others validated by the
	// library, and the lists joined in the rules' order.
	rules := len(p.common)
	if r != nil {
		rules++
	}
	w.lists = slices.Grow(w.lists[:0], rules)[:rules]
	clear(w.lists)
	ruleAt := func(k int) *rule {
		if k < len(p.common) {
			return p.common[k]
		}
		return r
	}
	var room [maxSet]setItem
	set := room[:0]
	for k := range rules {
		if f := ruleAt(k).fast; f != nil && fast {
			set = append(set, setItem{f, k})
		}
	}
	if len(set) > 0 {
		w.path, w.cur, w.vs = w.path[:0], set[0].k, nil
		w.validateSet(set, event, jsontext.SkipSpace(event, 0))
		w.lists[w.cur] = w.vs
	}
	var tree any // the event as the library reads it, made once if needed
	for k := range rules {
		if ruleAt(k).fast == nil || !fast {
			if tree == nil {
				tree = treeOf(event)
			}
			w.lists[k] = appendViolations(nil, ruleAt(k).schema.Validate(tree))
		}
	}
	for _, list := range w.lists {
		if vs == nil {
			vs = list // most often the one list with violations: no copy
		} else {
			vs = append(vs, list...)
		}
	}
	if unplanned && reportUnplanned { // no rule of its own: after the COMMON ones
		vs = append(vs, Violation{Type: TypeUnplanned, Field: segment.FieldEvent,
			Description: strconv.Quote(name) + " is not in the tracking plan"})
	}
	return vs, unplanned
}

// walkers keep their path's memory from one event to the next.
var walkers = sync.Pool{New: func() any { return &walker{path: make([]string, 0, 16)} }}

// appendViolations appends a violation for each leaf of err, described
// from the plan's side only.
func appendViolations(vs []Violation, err error) []Violation {
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return vs
	}
	return appendLeaves(vs, ve)
}

func appendLeaves(vs []Violation, ve *jsonschema.ValidationError) []Violation {
	if len(ve.Causes) > 0 {
		for _, c := range ve.Causes {
			vs = appendLeaves(vs, c)
		}
		return vs
	}
	field := strings.Join(ve.InstanceLocation, ".")
	switch k := ve.ErrorKind.(type) {
	case *kind.Required:
		for _, m := range k.Missing {
			f := join(field, m)
			vs = append(vs, Violation{TypeRequired, f, f + " is required"})
		}
		return vs
	case *kind.Type:
		return append(vs, Violation{TypeType, field, fmt.Sprintf("%s must be %s, not %s", subject(field), strings.Join(k.Want, " or "), k.Got)})
	case *kind.Format:
		return append(vs, Violation{TypeFormat, field, fmt.Sprintf("%s must be a valid %s", subject(field), k.Want)})
	case *kind.Enum:
		return append(vs, Violation{TypeEnum, field, fmt.Sprintf("%s must be one of %s", subject(field), planValues(k.Want))})
	case *kind.Const:
		return append(vs, Violation{TypeEnum, field, fmt.Sprintf("%s must be %s", subject(field), planValues([]any{k.Want}))})
	}
	return append(vs, Violation{TypeOther, field, fmt.Sprintf("%s does not meet the plan's %s", subject(field), strings.Join(ve.ErrorKind.KeywordPath(), "/"))})
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

func subject(field string) string {
	if field == "" {
		return "the event"
	}
	return field
}

// planValues writes values of the plan (never of the event) for a
// description, shortened: an enum may be long.
func planValues(vals []any) string {
	var b strings.Builder
	for i, v := range vals {
		if i == 8 {
			fmt.Fprintf(&b, ", … (%d in all)", len(vals))
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		j, _ := json.Marshal(v)
		b.Write(j)
	}
	return b.String()
}

// AppendJSON appends vs as a JSON array.
func AppendJSON(dst []byte, vs []Violation) []byte {
	b, _ := json.Marshal(vs) // strings and a fixed shape: cannot fail
	return append(dst, b...)
}

// FromFastJSON converts a parsed event to the form Check takes: objects,
// arrays, strings, json.Number, bool and nil.
func FromFastJSON(v *fastjson.Value) any {
	switch v.Type() {
	case fastjson.TypeObject:
		o, _ := v.Object()
		m := make(map[string]any, o.Len())
		o.Visit(func(k []byte, c *fastjson.Value) { m[string(k)] = FromFastJSON(c) })
		return m
	case fastjson.TypeArray:
		a, _ := v.Array()
		s := make([]any, len(a))
		for i, c := range a {
			s[i] = FromFastJSON(c)
		}
		return s
	case fastjson.TypeString:
		b, _ := v.StringBytes()
		return string(b)
	case fastjson.TypeNumber:
		return json.Number(v.String())
	case fastjson.TypeTrue:
		return true
	case fastjson.TypeFalse:
		return false
	}
	return nil
}

// Subject returns what Check needs of a parsed event besides itself: its
// type, and its name (a track's "event", a page's or screen's "name").
func Subject(v *fastjson.Value) (typ, name string) {
	typ = string(v.GetStringBytes(segment.FieldType))
	switch typ {
	case segment.Track:
		name = string(v.GetStringBytes(segment.FieldEvent))
	case segment.Page, segment.Screen:
		name = string(v.GetStringBytes("name"))
	}
	return typ, name
}

// SubjectJSON is Subject of an event's JSON text, which must be valid
// and an object, read without parsing it. The strings are the event's own
// bytes unless escaped: valid while the event is.
func SubjectJSON(event []byte) (typ, name string) {
	var w walker
	var nameField string
	var seenType, seenEvent, seenName bool // the first of a repeated key counts, as in Subject
	for i := jsontext.SkipSpace(event, jsontext.SkipSpace(event, 0)+1); i < len(event) && event[i] != '}'; {
		key, value := memberAt(event, i)
		i = value
		end := valueEnd(event, i)
		isString := event[i] == '"'
		switch k := w.str(key); {
		case k == segment.FieldType && !seenType:
			seenType = true
			if isString {
				typ = w.ownStr(event[i:end])
			}
		case k == segment.FieldEvent && !seenEvent:
			seenEvent = true
			if isString {
				name = w.ownStr(event[i:end])
			}
		case k == "name" && !seenName:
			seenName = true
			if isString {
				nameField = w.ownStr(event[i:end])
			}
		}
		if seenType && (typ == segment.Track && seenEvent || (typ == segment.Page || typ == segment.Screen) && seenName ||
			typ != segment.Track && typ != segment.Page && typ != segment.Screen) {
			break // the rest cannot change the answer
		}
		i = nextMember(event, end)
	}
	switch typ {
	case segment.Track:
	case segment.Page, segment.Screen:
		name = nameField
	default:
		name = ""
	}
	return typ, name
}

// Action is what a violation leads to.
type Action uint8

const (
	// Ignore: nothing (--tracking-plan-mode=off, --tracking-plan-unplanned=allow).
	Ignore Action = iota
	// Flag: stored and delivered with context.violations.
	Flag
	// Block: dead-lettered with reason violation.
	Block
)

// ParseMode parses --tracking-plan-mode: off, flag or block.
func ParseMode(s string) (Action, error) {
	switch s {
	case "off":
		return Ignore, nil
	case "flag", "":
		return Flag, nil
	case "block":
		return Block, nil
	}
	return Ignore, fmt.Errorf("want flag, block or off, got %q", s)
}

// ParseUnplanned parses --tracking-plan-unplanned: allow, flag or block.
func ParseUnplanned(s string) (Action, error) {
	if s == "allow" {
		return Ignore, nil
	}
	if s == "off" {
		return Ignore, fmt.Errorf("want allow, flag or block, got %q", s)
	}
	a, err := ParseMode(s)
	if err != nil {
		return Ignore, fmt.Errorf("want allow, flag or block, got %q", s)
	}
	return a, nil
}

// Verdict is what an event's violations lead to under mode (for the
// plan's rules) and unplanned (for a track event the plan does not name).
func Verdict(vs []Violation, mode, unplanned Action) Action {
	a := Ignore
	for _, v := range vs {
		if v.Type == TypeUnplanned {
			a = max(a, unplanned)
		} else {
			a = max(a, mode)
		}
	}
	return a
}
