package plan

import (
	"encoding/json"
	"math/big"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/valyala/fastjson"
)

// The schema library validates a tree of maps and slices: converting each
// event to one and walking it cost 20 µs an event, 16 times what the rest
// of the proxy spends on it. Tracking plans use a small part of JSON
// Schema (types, required and nested properties, enums, formats, bounds),
// so a rule whose compiled schema uses only that part is checked by the
// walk below, straight on the parsed event and allocating nothing while
// the event keeps the plan. A rule using anything else (references,
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
	strChecks                                            bool // minLength, maxLength or pattern
}

type fastProp struct {
	name string
	s    *fastSchema
}

// compileFast returns the fast form of s, or nil if s uses anything the
// fast walk does not do.
func compileFast(s *jsonschema.Schema) *fastSchema {
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
		c := compileFast(ps)
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
		if f.additional = compileFast(a); f.additional == nil {
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
		if f.items = compileFast(items); f.items == nil {
			return nil
		}
	}
	return f
}

func primitive(v any) bool {
	switch v.(type) {
	case nil, bool, string, json.Number, float64, int:
		return true
	}
	return false
}

// walker holds what one validation needs: the path of the value being
// checked, built in place.
type walker struct {
	path []string
	vs   []Violation
}

func (w *walker) field() string { return strings.Join(w.path, ".") }

// typeName is the JSON Schema type of v, as the library names it.
func typeName(v *fastjson.Value) string {
	switch v.Type() {
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
	if !strings.ContainsAny(text, ".eE") {
		return true
	}
	r, ok := new(big.Rat).SetString(text)
	return ok && r.IsInt()
}

func (f *fastSchema) typeOK(v *fastjson.Value) bool {
	if f.types == nil {
		return true
	}
	t := typeName(v)
	for _, want := range f.types {
		if want == t {
			return true
		}
		if want == "integer" && t == "number" {
			var buf [64]byte
			if isInteger(string(v.MarshalTo(buf[:0]))) {
				return true
			}
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
}

func newNumBound(r *big.Rat) *numBound {
	if r == nil {
		return nil
	}
	f, _ := r.Float64()
	return &numBound{r, f}
}

// compare compares the number v with the bound as JSON Schema does,
// exactly. Floats decide unless they are equal: rounding to the nearest
// float never reverses an order, only merges what is close.
func (b *numBound) compare(v *fastjson.Value) int {
	if x, err := v.Float64(); err == nil {
		if x < b.f {
			return -1
		} else if x > b.f {
			return 1
		}
	}
	var buf [64]byte
	n, ok := new(big.Rat).SetString(string(v.MarshalTo(buf[:0])))
	if !ok {
		return 0
	}
	return n.Cmp(b.exact)
}

// validate appends the violations of v, checked in the library's order:
// a wrong type, const, enum or format ends the checks of a value.
func (w *walker) validate(f *fastSchema, v *fastjson.Value) {
	s := f.src
	if !f.typeOK(v) {
		w.vs = append(w.vs, Violation{TypeType, w.field(), subject(w.field()) + " must be " + strings.Join(f.types, " or ") + ", not " + typeName(v)})
		return
	}
	if s.Const != nil && !equalPrimitive(v, *s.Const) {
		w.vs = append(w.vs, Violation{TypeEnum, w.field(), subject(w.field()) + " must be " + planValues([]any{*s.Const})})
		return
	}
	if s.Enum != nil && !slices.ContainsFunc(s.Enum.Values, func(e any) bool { return equalPrimitive(v, e) }) {
		w.vs = append(w.vs, Violation{TypeEnum, w.field(), subject(w.field()) + " must be one of " + planValues(s.Enum.Values)})
		return
	}
	if s.Format != nil && !formatOK(s.Format, v) {
		w.vs = append(w.vs, Violation{TypeFormat, w.field(), subject(w.field()) + " must be a valid " + s.Format.Name})
		return
	}
	switch v.Type() {
	case fastjson.TypeObject:
		w.object(f, v)
	case fastjson.TypeArray:
		arr, _ := v.Array()
		if s.MinItems != nil && len(arr) < *s.MinItems {
			w.other("minItems")
		}
		if s.MaxItems != nil && len(arr) > *s.MaxItems {
			w.other("maxItems")
		}
		if f.items != nil {
			for i, e := range arr {
				w.path = append(w.path, strconv.Itoa(i))
				w.validate(f.items, e)
				w.path = w.path[:len(w.path)-1]
			}
		}
	case fastjson.TypeString:
		if f.strChecks {
			b, _ := v.StringBytes()
			n := utf8.RuneCount(b)
			if s.MinLength != nil && n < *s.MinLength {
				w.other("minLength")
			}
			if s.MaxLength != nil && n > *s.MaxLength {
				w.other("maxLength")
			}
			// The regexp keeps nothing of the string it matches.
			if s.Pattern != nil && !s.Pattern.MatchString(unsafe.String(unsafe.SliceData(b), len(b))) {
				w.other("pattern")
			}
		}
	case fastjson.TypeNumber:
		if f.minimum != nil && f.minimum.compare(v) < 0 {
			w.other("minimum")
		}
		if f.maximum != nil && f.maximum.compare(v) > 0 {
			w.other("maximum")
		}
		if f.exclusiveMinimum != nil && f.exclusiveMinimum.compare(v) <= 0 {
			w.other("exclusiveMinimum")
		}
		if f.exclusiveMaximum != nil && f.exclusiveMaximum.compare(v) >= 0 {
			w.other("exclusiveMaximum")
		}
	}
}

// formatOK checks a value against a format as the library does; the
// formats every event meets (an IP address in context.ip) without the
// allocations of the library's checks.
func formatOK(f *jsonschema.Format, v *fastjson.Value) bool {
	b, err := v.StringBytes()
	if err != nil {
		return f.Validate(FromFastJSON(v)) == nil // formats judge strings; most pass the rest
	}
	s := unsafe.String(unsafe.SliceData(b), len(b))
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

func (w *walker) other(keyword string) {
	w.vs = append(w.vs, Violation{TypeOther, w.field(), subject(w.field()) + " does not meet the plan's " + keyword})
}

// object checks an object's required members, then its members in the
// order the event has them, so that the first violation is that of the
// first field the app wrote wrong.
func (w *walker) object(f *fastSchema, v *fastjson.Value) {
	o, _ := v.Object()
	for _, r := range f.required {
		if o.Get(r) == nil {
			w.path = append(w.path, r)
			w.vs = append(w.vs, Violation{TypeRequired, w.field(), w.field() + " is required"})
			w.path = w.path[:len(w.path)-1]
		}
	}
	if len(f.props) == 0 && f.additional == nil && !f.noMore {
		return
	}
	extra := false
	o.Visit(func(k []byte, c *fastjson.Value) {
		sub := f.additional
		key := unsafe.String(unsafe.SliceData(k), len(k)) // read only while Visit runs; w.field copies
		if i, known := slices.BinarySearchFunc(f.props, key, func(p fastProp, k string) int { return strings.Compare(p.name, k) }); known {
			sub = f.props[i].s
		} else if f.noMore {
			extra = true
			return
		}
		if sub == nil {
			return
		}
		w.path = append(w.path, key)
		w.validate(sub, c)
		w.path = w.path[:len(w.path)-1]
	})
	if extra {
		w.other("additionalProperties")
	}
}

// equalPrimitive compares v with a value of the plan as JSON Schema does:
// numbers by value, 1 and 1.0 alike.
func equalPrimitive(v *fastjson.Value, want any) bool {
	switch want := want.(type) {
	case nil:
		return v.Type() == fastjson.TypeNull
	case bool:
		return v.Type() == fastjson.TypeTrue && want || v.Type() == fastjson.TypeFalse && !want
	case string:
		b, err := v.StringBytes()
		return err == nil && string(b) == want
	case json.Number, float64, int:
		if v.Type() != fastjson.TypeNumber {
			return false
		}
		a, ok1 := new(big.Rat).SetString(string(v.MarshalTo(nil)))
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
