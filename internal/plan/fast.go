package plan

import (
	"bytes"
	"encoding/json"
	"math"
	"math/big"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"unicode/utf8"
	"unsafe"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/internal/jsontext"
)

// The schema library validates a tree of maps and slices: converting each
// event to one and walking it cost 20 µs an event, 16 times what the rest
// of the proxy spends on it. Tracking plans use a small part of JSON
// Schema (types, required and nested properties, enums, formats, bounds),
// so a rule whose compiled schema uses only that part is checked by the
// walk below, straight on the event's JSON text and allocating nothing
// while the event keeps the plan. A rule using anything else (references,
// combinators, conditionals, ...) keeps the library's own validation.
// FuzzParse holds the two to the same violations.

// fastSchema is a compiled schema node of the supported subset.
type fastSchema struct {
	src        *jsonschema.Schema // for the plan's values in descriptions and formats
	types      []string           // nil: any
	required   []string
	props      []fastProp // sorted by name, for a binary search
	additional *fastSchema
	noMore     bool // additionalProperties: false
	items      *fastSchema
	// The numeric bounds; nil: none.
	minimum, maximum, exclusiveMinimum, exclusiveMaximum *numBound
	strChecks                                            bool       // minLength, maxLength or pattern
	texts                                                *fastTexts // nil: written as found
}

type fastProp struct {
	name string
	s    *fastSchema
}

// prop returns the schema of the member key, nil if f names none. A rule
// names a handful of members: comparing lengths first, a scan beats a
// binary search's string comparisons, which were a fifth of the walk.
func (f *fastSchema) prop(key string) *fastSchema {
	if len(f.props) > 16 {
		if p, found := slices.BinarySearchFunc(f.props, key, func(p fastProp, k string) int { return strings.Compare(p.name, k) }); found {
			return f.props[p].s
		}
		return nil
	}
	for i := range f.props {
		if p := &f.props[i]; len(p.name) == len(key) && p.name == key {
			return p.s
		}
	}
	return nil
}

// compileFast returns the fast form of s, or nil if s uses anything the
// fast walk does not do. field is where s applies in the event, named as
// a violation names it, and static whether that is the only place: not
// under items or additionalProperties, whose paths hold the event's own
// indexes and keys.
func compileFast(s *jsonschema.Schema, field string, static bool) *fastSchema {
	if s == nil {
		return nil
	}
	if s.Bool != nil {
		if *s.Bool {
			return &fastSchema{src: s}
		}
		return nil
	}
	if s.Ref != nil || s.RecursiveRef != nil || s.DynamicRef != nil || s.Not != nil ||
		len(s.AllOf)+len(s.AnyOf)+len(s.OneOf) > 0 || s.If != nil || s.Then != nil || s.Else != nil ||
		s.MaxProperties != nil || s.MinProperties != nil || s.PropertyNames != nil || len(s.PatternProperties) > 0 ||
		len(s.Dependencies)+len(s.DependentRequired)+len(s.DependentSchemas) > 0 || s.UnevaluatedProperties != nil ||
		s.UniqueItems || s.Contains != nil || s.MinContains != nil || s.MaxContains != nil ||
		s.AdditionalItems != nil || len(s.PrefixItems) > 0 || s.UnevaluatedItems != nil ||
		s.ContentEncoding != nil || s.ContentMediaType != nil || s.ContentSchema != nil ||
		s.MultipleOf != nil || len(s.Extensions) > 0 {
		return nil
	}
	f := &fastSchema{src: s, required: s.Required,
		minimum: newNumBound(s.Minimum), maximum: newNumBound(s.Maximum),
		exclusiveMinimum: newNumBound(s.ExclusiveMinimum), exclusiveMaximum: newNumBound(s.ExclusiveMaximum),
		strChecks: s.MinLength != nil || s.MaxLength != nil || s.Pattern != nil}
	if s.Types != nil && !s.Types.IsEmpty() {
		f.types = s.Types.ToStrings()
	}
	if s.Const != nil && !primitive(*s.Const) {
		return nil
	}
	if s.Enum != nil {
		for _, v := range s.Enum.Values {
			if !primitive(v) {
				return nil
			}
		}
	}
	for name, ps := range s.Properties {
		c := compileFast(ps, joinField(field, name), static)
		if c == nil {
			return nil
		}
		f.props = append(f.props, fastProp{name, c})
	}
	slices.SortFunc(f.props, func(a, b fastProp) int { return strings.Compare(a.name, b.name) })
	switch a := s.AdditionalProperties.(type) {
	case nil:
	case bool:
		f.noMore = !a
	case *jsonschema.Schema:
		if f.additional = compileFast(a, "", false); f.additional == nil {
			return nil
		}
	default:
		return nil
	}
	items := s.Items2020
	switch it := s.Items.(type) {
	case nil:
	case *jsonschema.Schema:
		items = it
	default: // a tuple
		return nil
	}
	if items != nil {
		if f.items = compileFast(items, "", false); f.items == nil {
			return nil
		}
	}
	if static {
		f.texts = newFastTexts(f, field)
	}
	return f
}

func joinField(field, name string) string {
	if field == "" {
		return name
	}
	return field + "." + name
}

// fastTexts are the field and descriptions of a node's violations,
// written when the plan loads: a node reached through named properties
// only is always at the same place, and its violations read the same
// every time. Built as each was found, they were most of what a flagged
// or blocked event allocated.
type fastTexts struct {
	field string
	// wrongType is written the first time a value of that type breaks
	// the node: written for every type at load, they were a third of a
	// plan's memory.
	wrongType               [fastjson.TypeFalse + 1]atomic.Pointer[string]
	constant, enum, format  string
	requiredField, required []string // by f.required's index
	other                   []keywordText
}

type keywordText struct{ keyword, text string }

func newFastTexts(f *fastSchema, field string) *fastTexts {
	s := f.src
	x := &fastTexts{field: field}
	if s.Const != nil {
		x.constant = constText(s, field)
	}
	if s.Enum != nil {
		x.enum = enumText(s, field)
	}
	if s.Format != nil {
		x.format = formatText(s, field)
	}
	for _, name := range f.required {
		child := joinField(field, name)
		x.requiredField = append(x.requiredField, child)
		x.required = append(x.required, requiredText(child))
	}
	for _, k := range []struct {
		keyword string
		set     bool
	}{
		{"minLength", s.MinLength != nil}, {"maxLength", s.MaxLength != nil}, {"pattern", s.Pattern != nil},
		{"minimum", f.minimum != nil}, {"maximum", f.maximum != nil},
		{"exclusiveMinimum", f.exclusiveMinimum != nil}, {"exclusiveMaximum", f.exclusiveMaximum != nil},
		{"additionalProperties", f.noMore}, {"minItems", s.MinItems != nil}, {"maxItems", s.MaxItems != nil},
	} {
		if k.set {
			x.other = append(x.other, keywordText{k.keyword, otherText(field, k.keyword)})
		}
	}
	if f.types == nil && s.Const == nil && s.Enum == nil && s.Format == nil && x.required == nil && x.other == nil {
		return nil // nothing of it can be broken
	}
	return x
}

func wrongTypeText(f *fastSchema, field string, t fastjson.Type) string {
	return subject(field) + " must be " + strings.Join(f.types, " or ") + ", not " + typeName(t)
}

func constText(s *jsonschema.Schema, field string) string {
	return subject(field) + " must be " + planValues([]any{*s.Const})
}

func enumText(s *jsonschema.Schema, field string) string {
	return subject(field) + " must be one of " + planValues(s.Enum.Values)
}

func formatText(s *jsonschema.Schema, field string) string {
	return subject(field) + " must be a valid " + s.Format.Name
}

func otherText(field, keyword string) string {
	return subject(field) + " does not meet the plan's " + keyword
}

func requiredText(field string) string { return field + " is required" }

func primitive(v any) bool {
	switch v.(type) {
	case nil, bool, string, json.Number, float64, int:
		return true
	}
	return false
}

// walker holds what one validation needs: the path of the value being
// checked, built in place, and room to unescape strings.
type walker struct {
	path []string
	// vs is the violations of the rule being checked; lists every rule's,
	// vs being lists[cur] while it is.
	vs      []Violation
	lists   [][]Violation
	cur     int
	unquote []byte
}

// setItem is a rule's schema for the value being walked, and the index of
// the rule's violations in walker.lists.
type setItem struct {
	f *fastSchema
	k int
}

// maxSet bounds the rules whose members are read together; past it, each
// is walked alone.
const maxSet = 8

// to makes rule k's violations the ones the checks append to.
func (w *walker) to(k int) {
	if k != w.cur {
		w.lists[w.cur] = w.vs
		w.cur, w.vs = k, w.lists[k]
	}
}

// validateSet is validate for several rules at once, each rule's
// violations in its own list, as validate alone finds them: an object's
// members are read once for all the rules that read them. An event is
// checked against its COMMON rules and its own, and walking them one
// after the other read it once each, skipping mostly the same members:
// together, a loadgen event's check against plan50 takes a fifth less.
func (w *walker) validateSet(set []setItem, b []byte, i int) (end int) {
	if len(set) == 1 || len(set) > maxSet || jsontext.Kind(b[i]) != fastjson.TypeObject {
		for _, it := range set {
			w.to(it.k)
			end = w.validate(it.f, b, i)
		}
		return end
	}
	var buf [maxSet]setItem
	walk := buf[:0]
	for _, it := range set {
		w.to(it.k)
		if w.objectOK(it.f, b, i) {
			walk = append(walk, it)
		}
	}
	if len(walk) == 0 {
		return valueEnd(b, i)
	}
	return w.objectSet(walk, b, i)
}

func (w *walker) field() string { return strings.Join(w.path, ".") }

// typeName is the JSON Schema type of a value of type t, as the library
// names it.
func typeName(t fastjson.Type) string {
	switch t {
	case fastjson.TypeNull:
		return "null"
	case fastjson.TypeTrue, fastjson.TypeFalse:
		return "boolean"
	case fastjson.TypeNumber:
		return "number"
	case fastjson.TypeString:
		return "string"
	case fastjson.TypeArray:
		return "array"
	}
	return "object"
}

// isInteger reports whether a number's text is an integer's, 1.0 and 1e2
// included, as the library reads it.
func isInteger(text string) bool {
	if strings.ContainsAny(text, "eE") {
		r, ok := new(big.Rat).SetString(text)
		return ok && r.IsInt()
	}
	dot := strings.IndexByte(text, '.')
	return dot < 0 || strings.Trim(text[dot+1:], "0") == ""
}

func (f *fastSchema) typeOK(t fastjson.Type, v []byte) bool {
	if f.types == nil {
		return true
	}
	name := typeName(t)
	for _, want := range f.types {
		if want == name {
			return true
		}
		if want == "integer" && t == fastjson.TypeNumber && isInteger(unsafeString(v)) {
			return true
		}
	}
	return false
}

// numBound is a numeric bound of the plan, also as the float nearest to
// it: converting the exact value on every comparison was most of the
// cost of checking a number.
type numBound struct {
	exact *big.Rat
	f     float64
	// smallInt: the bound is an integer of at most 15 digits, which f
	// holds exactly.
	smallInt bool
}

func newNumBound(r *big.Rat) *numBound {
	if r == nil {
		return nil
	}
	f, _ := r.Float64()
	return &numBound{exact: r, f: f, smallInt: r.IsInt() && math.Abs(f) < 1e15}
}

// compare compares the number whose text is v with the bound as JSON
// Schema does, exactly. Floats decide unless they are equal: rounding to
// the nearest float never reverses an order, only merges what is close.
func (b *numBound) compare(v []byte) int {
	if x, err := strconv.ParseFloat(unsafeString(v), 64); err == nil {
		if x < b.f {
			return -1
		} else if x > b.f {
			return 1
		}
		// Equal as floats: a value at an integer bound, the common case,
		// is equal exactly if its text is an integer short enough to
		// convert exactly.
		if digits := bytes.TrimPrefix(v, []byte("-")); b.smallInt && len(digits) <= 15 && bytes.IndexAny(digits, ".eE") < 0 {
			return 0
		}
	}
	n, ok := new(big.Rat).SetString(string(v))
	if !ok {
		return 0
	}
	return n.Cmp(b.exact)
}

// validate appends the violations of the JSON value that starts at b[i],
// checked in the library's order: a wrong type, const, enum or format
// ends the checks of a value. It returns where the value ends: a value is
// read once, and skipped where its rule says nothing of it.
func (w *walker) validate(f *fastSchema, b []byte, i int) (end int) {
	s := f.src
	t := jsontext.Kind(b[i])
	if t == fastjson.TypeObject {
		if w.objectOK(f, b, i) {
			return w.object(f, b, i)
		}
		return valueEnd(b, i)
	}
	end = valueEnd(b, i)
	v := b[i:end]
	if !w.checksOK(f, t, v) {
		return end
	}
	switch t {
	case fastjson.TypeArray:
		w.array(f, v)
	case fastjson.TypeString:
		if f.strChecks {
			str := w.str(v)
			n := utf8.RuneCountInString(str)
			if s.MinLength != nil && n < *s.MinLength {
				w.other(f, "minLength")
			}
			if s.MaxLength != nil && n > *s.MaxLength {
				w.other(f, "maxLength")
			}
			if s.Pattern != nil && !s.Pattern.MatchString(str) {
				w.other(f, "pattern")
			}
		}
	case fastjson.TypeNumber:
		if f.minimum != nil && f.minimum.compare(v) < 0 {
			w.other(f, "minimum")
		}
		if f.maximum != nil && f.maximum.compare(v) > 0 {
			w.other(f, "maximum")
		}
		if f.exclusiveMinimum != nil && f.exclusiveMinimum.compare(v) <= 0 {
			w.other(f, "exclusiveMinimum")
		}
		if f.exclusiveMaximum != nil && f.exclusiveMaximum.compare(v) >= 0 {
			w.other(f, "exclusiveMaximum")
		}
	}
	return end
}

// checksOK makes the checks of a value of type t whose failure ends its
// checks (type, const, enum, format) and reports whether they all passed.
// v is the value's text; nil for an object with no const, enum or format.
func (w *walker) checksOK(f *fastSchema, t fastjson.Type, v []byte) bool {
	s := f.src
	x := f.texts
	if !f.typeOK(t, v) {
		if x != nil {
			text := x.wrongType[t].Load()
			if text == nil {
				text = new(wrongTypeText(f, x.field, t))
				x.wrongType[t].Store(text)
			}
			w.vs = append(w.vs, Violation{TypeType, x.field, *text})
		} else {
			w.vs = append(w.vs, Violation{TypeType, w.field(), wrongTypeText(f, w.field(), t)})
		}
		return false
	}
	if s.Const != nil && !w.equalPrimitive(t, v, *s.Const) {
		if x != nil {
			w.vs = append(w.vs, Violation{TypeEnum, x.field, x.constant})
		} else {
			w.vs = append(w.vs, Violation{TypeEnum, w.field(), constText(s, w.field())})
		}
		return false
	}
	if s.Enum != nil && !slices.ContainsFunc(s.Enum.Values, func(e any) bool { return w.equalPrimitive(t, v, e) }) {
		if x != nil {
			w.vs = append(w.vs, Violation{TypeEnum, x.field, x.enum})
		} else {
			w.vs = append(w.vs, Violation{TypeEnum, w.field(), enumText(s, w.field())})
		}
		return false
	}
	if s.Format != nil && !w.formatOK(s.Format, t, v) {
		if x != nil {
			w.vs = append(w.vs, Violation{TypeFormat, x.field, x.format})
		} else {
			w.vs = append(w.vs, Violation{TypeFormat, w.field(), formatText(s, w.field())})
		}
		return false
	}
	return true
}

// objectOK is checksOK of the object that starts at b[i]: whether its
// members are to be checked.
func (w *walker) objectOK(f *fastSchema, b []byte, i int) bool {
	var v []byte
	if s := f.src; s.Const != nil || s.Enum != nil || s.Format != nil {
		v = b[i:valueEnd(b, i)]
	}
	return w.checksOK(f, fastjson.TypeObject, v)
}

// str returns the contents of the JSON string v, unescaped. It is valid
// until the next call, and is v's own bytes when nothing is escaped.
func (w *walker) str(v []byte) string {
	in := v[1 : len(v)-1]
	if bytes.IndexByte(in, '\\') < 0 {
		return unsafeString(in)
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		return unsafeString(in) // not the proxy's, which writes valid JSON
	}
	w.unquote = append(w.unquote[:0], s...)
	return unsafeString(w.unquote)
}

// ownStr is str, copied when it was unescaped into the walker's room:
// valid for as long as v is.
func (w *walker) ownStr(v []byte) string {
	s := w.str(v)
	if bytes.IndexByte(v, '\\') >= 0 {
		return strings.Clone(s)
	}
	return s
}

// formatOK checks a value against a format as the library does; the
// formats every event meets (an IP address in context.ip) without the
// allocations of the library's checks.
func (w *walker) formatOK(f *jsonschema.Format, t fastjson.Type, v []byte) bool {
	if t != fastjson.TypeString {
		return f.Validate(treeOf(v)) == nil // formats judge strings; most pass the rest
	}
	s := w.str(v)
	switch f.Name {
	case "ipv4":
		return ipv4OK(s)
	case "ipv6":
		a, err := netip.ParseAddr(s)
		return strings.Contains(s, ":") && err == nil && a.Zone() == ""
	}
	return f.Validate(strings.Clone(s)) == nil
}

// ipv4OK is the library's ipv4 format: four groups split on '.', each what
// strconv.Atoi reads as 0 to 255, with no leading zero.
func ipv4OK(s string) bool {
	groups := 0
	for g := range strings.SplitSeq(s, ".") {
		groups++
		if groups > 4 || len(g) > 1 && g[0] == '0' {
			return false
		}
		neg := false
		if len(g) > 0 && (g[0] == '+' || g[0] == '-') {
			neg, g = g[0] == '-', g[1:]
		}
		if g == "" {
			return false
		}
		n := 0
		for _, c := range []byte(g) {
			if c < '0' || c > '9' {
				return false
			}
			if n <= 255 { // past it, only "too large" matters
				n = n*10 + int(c-'0')
			}
		}
		if n > 255 || neg && n != 0 {
			return false
		}
	}
	return groups == 4
}

// other appends the violation of f's keyword.
func (w *walker) other(f *fastSchema, keyword string) {
	if x := f.texts; x != nil {
		for _, k := range x.other {
			if k.keyword == keyword {
				w.vs = append(w.vs, Violation{TypeOther, x.field, k.text})
				return
			}
		}
	}
	field := w.field()
	w.vs = append(w.vs, Violation{TypeOther, field, otherText(field, keyword)})
}

// object checks the object that starts at b[i]: its required members,
// then its members in the order the event has them, so that the first
// violation is that of the first field the app wrote wrong. It returns
// where the object ends.
func (w *walker) object(f *fastSchema, b []byte, i int) (end int) {
	set := [1]setItem{{f, w.cur}}
	return w.objectSet(set[:], b, i)
}

// objectSet is object for the rules of set (at most maxSet), each with its
// own violations: the members are read once, each checked against the
// schemas the rules have for it.
func (w *walker) objectSet(set []setItem, b []byte, i int) (end int) {
	start := i
	var state [maxSet]struct {
		mark  int
		seen  uint64 // of f.required, by index; past 64, looked up again
		extra bool
	}
	for j, it := range set {
		w.to(it.k)
		state[j].mark = len(w.vs)
	}
	var subs [maxSet]setItem
	for i = jsontext.SkipSpace(b, i+1); i < len(b) && b[i] != '}'; {
		quotedKey, value := memberAt(b, i)
		key := w.str(quotedKey)
		n := 0
		for j, it := range set {
			if sub := it.f.member(key, &state[j].seen, &state[j].extra); sub != nil {
				subs[n] = setItem{sub, it.k}
				n++
			}
		}
		if n == 0 {
			i = nextMember(b, valueEnd(b, value))
			continue
		}
		if bytes.IndexByte(quotedKey, '\\') >= 0 {
			key = strings.Clone(key) // w.str's room is reused below
		}
		w.path = append(w.path, key)
		i = nextMember(b, w.validateSet(subs[:n], b, value))
		w.path = w.path[:len(w.path)-1]
	}
	end = min(i+1, len(b))
	for j, it := range set {
		w.to(it.k)
		from := len(w.vs)
		for r, name := range it.f.required {
			if r < 64 && state[j].seen&(1<<r) != 0 || r >= 64 && w.hasMember(b[start:end], name) {
				continue
			}
			if x := it.f.texts; x != nil {
				w.vs = append(w.vs, Violation{TypeRequired, x.requiredField[r], x.required[r]})
				continue
			}
			w.path = append(w.path, name)
			w.vs = append(w.vs, Violation{TypeRequired, w.field(), requiredText(w.field())})
			w.path = w.path[:len(w.path)-1]
		}
		w.putFirst(state[j].mark, from)
		if state[j].extra {
			w.other(it.f, "additionalProperties")
		}
	}
	return end
}

// member records that an object has the member key, for f's required
// ones, and returns the schema its value is checked against; nil if none.
func (f *fastSchema) member(key string, seen *uint64, extra *bool) *fastSchema {
	for r, name := range f.required[:min(len(f.required), 64)] {
		if name == key {
			*seen |= 1 << r
		}
	}
	if p := f.prop(key); p != nil {
		return p
	}
	if f.noMore {
		*extra = true
		return nil
	}
	return f.additional
}

// hasMember reports whether the object v has the member key.
func (w *walker) hasMember(v []byte, key string) bool {
	for i := jsontext.SkipSpace(v, 1); i < len(v) && v[i] != '}'; {
		k, value := memberAt(v, i)
		if w.str(k) == key {
			return true
		}
		i = nextMember(v, valueEnd(v, value))
	}
	return false
}

// memberAt reads the member of an object whose key starts at b[i]: the
// key as written, quoted, and where its value starts.
func memberAt(b []byte, i int) (key []byte, value int) {
	keyEnd := valueEnd(b, i)
	return b[i:keyEnd], jsontext.SkipSpace(b, jsontext.SkipSpace(b, keyEnd)+1) // past ':'
}

// nextMember returns where the member after the value that ends at b[end]
// starts, or where its object ends.
func nextMember(b []byte, end int) int {
	i := jsontext.SkipSpace(b, end)
	if i < len(b) && b[i] == ',' {
		i = jsontext.SkipSpace(b, i+1)
	}
	return i
}

// array checks the array v's items, then its length.
func (w *walker) array(f *fastSchema, v []byte) {
	mark, n := len(w.vs), 0
	for i := jsontext.SkipSpace(v, 1); i < len(v) && v[i] != ']'; n++ {
		var end int
		if f.items != nil {
			w.path = append(w.path, strconv.Itoa(n))
			end = w.validate(f.items, v, i)
			w.path = w.path[:len(w.path)-1]
		} else {
			end = valueEnd(v, i)
		}
		i = jsontext.SkipSpace(v, end)
		if i < len(v) && v[i] == ',' {
			i = jsontext.SkipSpace(v, i+1)
		}
	}
	s := f.src
	from := len(w.vs)
	if s.MinItems != nil && n < *s.MinItems {
		w.other(f, "minItems")
	}
	if s.MaxItems != nil && n > *s.MaxItems {
		w.other(f, "maxItems")
	}
	w.putFirst(mark, from)
}

// putFirst moves the violations appended since from to mark, ahead of
// those found between mark and from, each group in its order: the
// library reports a value's own violations before its members', and
// these are known only once the members are read.
func (w *walker) putFirst(mark, from int) {
	slices.Reverse(w.vs[mark:from])
	slices.Reverse(w.vs[from:])
	slices.Reverse(w.vs[mark:])
}

// equalPrimitive compares the value v, of type t, with a value of the
// plan as JSON Schema does: numbers by value, 1 and 1.0 alike.
func (w *walker) equalPrimitive(t fastjson.Type, v []byte, want any) bool {
	switch want := want.(type) {
	case nil:
		return t == fastjson.TypeNull
	case bool:
		return t == fastjson.TypeTrue && want || t == fastjson.TypeFalse && !want
	case string:
		return t == fastjson.TypeString && w.str(v) == want
	case json.Number, float64, int:
		if t != fastjson.TypeNumber {
			return false
		}
		a, ok1 := new(big.Rat).SetString(string(v))
		b, ok2 := new(big.Rat).SetString(numberText(want))
		return ok1 && ok2 && a.Cmp(b) == 0
	}
	return false
}

func numberText(v any) string {
	switch v := v.(type) {
	case json.Number:
		return string(v)
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case int:
		return strconv.Itoa(v)
	}
	return ""
}

// The walk reads the JSON text as the proxy writes it, without building
// values: parsing it into a tree first cost as much as the walk, and
// more while the collector runs, as every pointer the parser stores then
// goes through a write barrier. It trusts the text to be valid: the
// proxy's own output, or the text of a value fastjson parsed.

// valueEnd is jsontext.ValueEnd of text the walk trusts: a value that
// the end of b cuts off (an event that is a bare number) ends there.
func valueEnd(b []byte, i int) int {
	if end, ok := jsontext.ValueEnd(b, i); ok {
		return end
	}
	return len(b)
}

// treeOf is the JSON text v as the library validates it, read as fastjson
// reads it (bytes that are not UTF-8 kept as they are).
func treeOf(v []byte) any {
	var p fastjson.Parser
	parsed, err := p.ParseBytes(v)
	if err != nil {
		return nil // the proxy's own output: valid
	}
	return FromFastJSON(parsed)
}

func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
