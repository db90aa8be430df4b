package plan

import (
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/valyala/fastjson"
)

func loadTestPlan(t testing.TB) *Plan {
	t.Helper()
	p, err := Load(filepath.Join("testdata", "plan.json"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func check(t *testing.T, p *Plan, event string, reportUnplanned bool) ([]Violation, bool) {
	t.Helper()
	v, err := fastjson.Parse(event)
	if err != nil {
		t.Fatal(err)
	}
	typ, name := Subject(v)
	slowVs, slowUnplanned := p.check(v.MarshalTo(nil), typ, name, reportUnplanned, false)
	vs, unplanned := p.Check(v, typ, name, reportUnplanned)
	if !sameViolations(vs, slowVs) || unplanned != slowUnplanned {
		t.Errorf("%s: the fast walk found %v, the library %v", event, vs, slowVs)
	}
	if raw, _ := p.CheckJSON([]byte(event), typ, name, reportUnplanned); !sameViolations(raw, slowVs) {
		t.Errorf("%s as written: the fast walk found %v, the library %v", event, raw, slowVs)
	}
	return vs, unplanned
}

func TestCheck(t *testing.T) {
	p := loadTestPlan(t)
	tests := []struct {
		scenario string
		event    string
		want     []Violation
	}{
		{"a planned event that keeps its rule", `{"type":"track","event":"Order Completed","properties":{"orderId":"o1","revenue":12.5,"currency":"EUR"}}`, nil},
		{"a missing required property", `{"type":"track","event":"Order Completed","properties":{"orderId":"o1"}}`,
			[]Violation{{TypeRequired, "properties.revenue", "properties.revenue is required"}}},
		{"a property of the wrong type", `{"type":"track","event":"Order Completed","properties":{"orderId":"o1","revenue":"12"}}`,
			[]Violation{{TypeType, "properties.revenue", "properties.revenue must be number, not string"}}},
		{"a value outside the enum", `{"type":"track","event":"Order Completed","properties":{"orderId":"o1","revenue":1,"currency":"GBP"}}`,
			[]Violation{{TypeEnum, "properties.currency", `properties.currency must be one of "EUR", "USD"`}}},
		{"a value not in its format, never quoted", `{"type":"track","event":"Order Completed","properties":{"orderId":"o1","revenue":1,"email":"not-an-email"}}`,
			[]Violation{{TypeFormat, "properties.email", "properties.email must be a valid email"}}},
		{"an unplanned track event", `{"type":"track","event":"Cart Abandoned"}`,
			[]Violation{{TypeUnplanned, "event", `"Cart Abandoned" is not in the tracking plan`}}},
		{"an identify against the IDENTIFY rule", `{"type":"identify","traits":{"email":"x"}}`,
			[]Violation{{TypeFormat, "traits.email", "traits.email must be a valid email"}}},
		{"a page its named rule covers", `{"type":"page","name":"Pricing","properties":{"path":"/p"}}`,
			[]Violation{{TypeRequired, "properties.plan", "properties.plan is required"}}},
		{"a page only the empty-key rule covers", `{"type":"page","name":"Home","properties":{}}`,
			[]Violation{{TypeRequired, "properties.path", "properties.path is required"}}},
		{"a COMMON rule on any event", `{"type":"group","context":{"app":"x"}}`,
			[]Violation{{TypeType, "context.app", "context.app must be object, not string"}}},
		{"an alias, which no rule names", `{"type":"alias"}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			got, _ := check(t, p, tt.event, true)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
	if vs, unplanned := check(t, p, `{"type":"track","event":"Cart Abandoned"}`, false); len(vs) != 0 || !unplanned {
		t.Errorf("unplanned not reported: %v, %v", vs, unplanned)
	}
}

func TestTheLatestVersionApplies(t *testing.T) {
	p, err := Parse([]byte(`{"rules":[
		{"type":"TRACK","key":"E","version":2,"jsonSchema":{"required":["v2"]}},
		{"type":"TRACK","key":"E","version":1,"jsonSchema":{"required":["v1"]}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	vs, _ := p.Check(fastjson.MustParse(`{}`), "track", "E", true)
	if len(vs) != 1 || vs[0].Field != "v2" {
		t.Errorf("violations %v, want only version 2's", vs)
	}
}

func TestPlansThatDoNotLoad(t *testing.T) {
	tests := map[string]string{
		"not JSON":                     `{"rules":[`,
		"no rules":                     `{"plan":[]}`,
		"an unknown type":              `{"rules":[{"type":"ALIAS","key":"","jsonSchema":{}}]}`,
		"a track rule without a name":  `{"rules":[{"type":"TRACK","key":"","jsonSchema":{}}]}`,
		"an identify rule with a key":  `{"rules":[{"type":"IDENTIFY","key":"x","jsonSchema":{}}]}`,
		"no schema":                    `{"rules":[{"type":"TRACK","key":"E"}]}`,
		"a schema that is not one":     `{"rules":[{"type":"TRACK","key":"E","jsonSchema":{"type":12}}]}`,
		"a reference outside the plan": `{"rules":[{"type":"TRACK","key":"E","jsonSchema":{"$ref":"file:///etc/passwd"}}]}`,
		"one rule twice":               `{"rules":[{"type":"TRACK","key":"E","jsonSchema":{}},{"type":"TRACK","key":"E","jsonSchema":{}}]}`,
		"a pattern Go cannot compile":  `{"rules":[{"type":"TRACK","key":"E","jsonSchema":{"pattern":"(?<=a)b"}}]}`,
	}
	for name, plan := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse([]byte(plan)); err == nil {
				t.Errorf("loaded %s", plan)
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("loaded a file that does not exist")
	}
}

func TestModes(t *testing.T) {
	for s, want := range map[string]Action{"flag": Flag, "block": Block, "off": Ignore, "": Flag} {
		if got, err := ParseMode(s); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v", s, got, err)
		}
	}
	for _, s := range []string{"allow", "on"} {
		if _, err := ParseMode(s); err == nil {
			t.Errorf("ParseMode(%q) took it", s)
		}
	}
	if _, err := ParseUnplanned("off"); err == nil {
		t.Error(`ParseUnplanned("off") took it`)
	}
	vs := []Violation{{Type: TypeUnplanned}}
	if Verdict(vs, Block, Flag) != Flag || Verdict(vs, Flag, Block) != Block || Verdict(append(vs, Violation{Type: TypeType}), Block, Flag) != Block {
		t.Error("Verdict does not apply --tracking-plan-unplanned to Unplanned and the mode to the rest")
	}
}

func TestViolationsAsJSON(t *testing.T) {
	b := AppendJSON(nil, []Violation{{TypeRequired, "a.b", "a.b is required"}})
	var got []map[string]string
	if err := json.Unmarshal(b, &got); err != nil || got[0]["type"] != "Required" || got[0]["field"] != "a.b" || got[0]["description"] != "a.b is required" {
		t.Errorf("%s: %v", b, err)
	}
}

func TestLabelsAreBounded(t *testing.T) {
	p := loadTestPlan(t)
	if got := strings.Join(p.Events(), ","); got != "Order Completed,Product Viewed" {
		t.Errorf("Events() = %s", got)
	}
	for _, c := range [][3]string{{"track", "Order Completed", "Order Completed"}, {"track", "Anything", Unplanned}, {"page", "Pricing", "page"}} {
		if got := p.Label(c[0], c[1]); got != c[2] {
			t.Errorf("Label(%s, %s) = %s, want %s", c[0], c[1], got, c[2])
		}
	}
}

// FuzzParse loads whatever it is given, which must never panic nor hang,
// and checks a few events against what loads.
func FuzzParse(f *testing.F) {
	b, err := os.ReadFile(filepath.Join("testdata", "plan.json"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	events := []string{
		`{"type":"track","event":"Order Completed","properties":{"orderId":"o","revenue":1}}`,
		`{"type":"track","event":"E","properties":{"a":[1,{"b":null}]}}`,
		`{"type":"page","name":"Pricing"}`, `{"type":"identify","traits":{"email":"a@b.c"}}`,
		`{"type":"track","event":"E","a":1.0,"b":-2.5e3,"c":"é","d":[1,"x",null,true],"e":{"f":{"g":"2024-05-01T12:00:00Z"}},"properties":{"a":"x","b":7}}`,
		`{"type":"group","groupId":1,"traits":{"n":"x","m":12345678901234567890}}`,
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			return
		}
		for _, e := range events {
			v := fastjson.MustParse(e)
			typ, name := Subject(v)
			vs, _ := p.Check(v, typ, name, true)
			if slow, _ := p.check(v.MarshalTo(nil), typ, name, true, false); !sameViolations(vs, slow) {
				t.Fatalf("%s against %s: the fast walk found %v, the library %v", e, data, vs, slow)
			}
			for _, x := range vs {
				if x.Type == "" || x.Description == "" {
					t.Fatalf("violation without a type or description: %+v", x)
				}
			}
			_ = AppendJSON(nil, vs)
		}
	})
}

// FuzzCheckJSON checks whatever event it is given against the test plan:
// the fast walk reads the event's text itself, escapes, white space and
// nesting included, and must find what the library finds in the parsed
// event; SubjectJSON must read what Subject does.
func FuzzCheckJSON(f *testing.F) {
	p := loadTestPlan(f)
	for _, e := range []string{
		`{"type":"track","event":"Order Completed","properties":{"orderId":"o","revenue":1}}`,
		`{ "type" : "track" , "event":"Order Completed", "properties" : { "orderId" : "\u006f\"x" , "revenue" : -1.5e3 , "products":[ {"sku":"a"} , {} ] } }`,
		`{"type":"page","name":"Pricing","properties":{"path":"/p\\","n":[1,[2,{"a":"]}"}]]}}`,
		`{"type":"identify","traits":{"email":"a@b.c","\u0065mail":1}}`,
		`{"type":"track","\u0065vent":"E","name":"N","context":{"type":"x"}}`,
		`{"type":"screen","name":"Home","event":"x"}`,
		// The COMMON rule's and the event's own, read in one walk.
		`{"type":"track","event":"Order Completed","context":{"app":1,"ip":"x"},"properties":{"revenue":"x","products":[{}]}}`,
	} {
		f.Add(e)
	}
	f.Fuzz(func(t *testing.T, event string) {
		v, err := fastjson.Parse(event)
		// fastjson takes raw control characters in strings and repeated
		// members, which the proxy never stores (the library reads the
		// last of a repeated member, the walk checks each).
		if err != nil || v.Type() != fastjson.TypeObject || !json.Valid([]byte(event)) || repeatsAKey(v) {
			return
		}
		typ, name := Subject(v)
		if rt, rn := SubjectJSON([]byte(event)); rt != typ || rn != name {
			t.Fatalf("%s: SubjectJSON read %q %q, Subject %q %q", event, rt, rn, typ, name)
		}
		slow, slowUnplanned := p.check(v.MarshalTo(nil), typ, name, true, false)
		raw, unplanned := p.CheckJSON([]byte(event), typ, name, true)
		if !sameViolations(raw, slow) || unplanned != slowUnplanned {
			t.Fatalf("%s: the fast walk found %v, the library %v", event, raw, slow)
		}
	})
}

func repeatsAKey(v *fastjson.Value) bool {
	repeats := false
	switch v.Type() {
	case fastjson.TypeObject:
		o, _ := v.Object()
		seen := map[string]bool{}
		o.Visit(func(k []byte, c *fastjson.Value) {
			repeats = repeats || seen[string(k)] || repeatsAKey(c)
			seen[string(k)] = true
		})
	case fastjson.TypeArray:
		a, _ := v.Array()
		for _, c := range a {
			repeats = repeats || repeatsAKey(c)
		}
	}
	return repeats
}

// sameViolations compares two lists of violations as sets: the library
// walks maps, in no set order.
func sameViolations(a, b []Violation) bool {
	key := func(v Violation) string { return v.Type + "\x00" + v.Field + "\x00" + v.Description }
	count := map[string]int{}
	for _, v := range a {
		count[key(v)]++
	}
	for _, v := range b {
		count[key(v)]--
	}
	for _, n := range count {
		if n != 0 {
			return false
		}
	}
	return true
}

// TestTheFastWalkTakesPlainPlans: the rules of a plan as Segment exports
// them go through the fast walk, and one using references keeps the
// library's validation.
func TestTheFastWalkTakesPlainPlans(t *testing.T) {
	p := loadTestPlan(t)
	for _, r := range append(append(p.common, p.track["Order Completed"], p.track["Product Viewed"]), p.all["PAGE"], p.byName["PAGE"]["Pricing"]) {
		if r.fast == nil {
			t.Errorf("rule %s %q is not taken by the fast walk", r.typ, r.key)
		}
	}
	q, err := Parse([]byte(`{"rules":[{"type":"TRACK","key":"E","jsonSchema":{"definitions":{"s":{"type":"string"}},"properties":{"event":{"$ref":"#/definitions/s"}}}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if q.track["E"].fast != nil {
		t.Error("a rule with $ref went to the fast walk")
	}
	// Patterns and array bounds are common in exported plans: a rule
	// using them must not fall back to the library's walk, which costs
	// more than the rest of ingest.
	r, err := Parse([]byte(`{"rules":[{"type":"TRACK","key":"E","jsonSchema":{"properties":{"properties":{"properties":{"id":{"type":"string","pattern":"^p_"},"tags":{"type":"array","minItems":1,"maxItems":3}}}}}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.track["E"].fast == nil {
		t.Error("a rule with pattern and minItems/maxItems is not taken by the fast walk")
	}
	for e, want := range map[string]int{`{"properties":{"id":"p_1","tags":["a"]}}`: 0, `{"properties":{"id":"q_1","tags":[]}}`: 2, `{"properties":{"id":"p","tags":[1,2,3,4]}}`: 2} {
		if vs, _ := check(t, r, `{"type":"track","event":"E",`+e[1:], true); len(vs) != want {
			t.Errorf("%s: %d violations %v, want %d", e, len(vs), vs, want)
		}
	}
	vs, _ := check(t, q, `{"type":"track","event":"E","properties":{}}`, true)
	if len(vs) != 0 {
		t.Errorf("violations %v", vs)
	}
}

// TestFormatsAsTheLibraryReadsThem: the fast walk's own ipv4 and ipv6
// checks agree with the library's on the cases that tell them apart.
func TestFormatsAsTheLibraryReadsThem(t *testing.T) {
	p, err := Parse([]byte(`{"rules":[{"type":"TRACK","key":"E","jsonSchema":{"properties":{"a":{"format":"ipv4"},"b":{"format":"ipv6"},"c":{"format":"email"}}}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"1.2.3.4", "01.2.3.4", "0.0.0.0", "1.2.3", "1.2.3.4.5", "256.1.1.1", "+1.2.3.4", "-0.1.2.3", "-1.2.3.4",
		"+000000001.2.3.4", "1..2.3", "", "::1", "fe80::1%eth0", "1.2.3.4 ", "a.b.c.d", "2001:db8::", "x@y.z", "no-at"} {
		q, _ := json.Marshal(s)
		for _, k := range []string{"a", "b", "c"} {
			check(t, p, `{"type":"track","event":"E","`+k+`":`+string(q)+`}`, true) // compares the two
		}
	}
}

// TestARepeatedPatternIsCompiledOnce: plans repeat the shape of an id in
// every rule that carries it; each rule holding its own compiled copy
// made a 50-rule plan cost a megabyte of heap.
func TestARepeatedPatternIsCompiledOnce(t *testing.T) {
	p, err := Parse([]byte(`{"rules":[
		{"type":"TRACK","key":"A","jsonSchema":{"properties":{"properties":{"properties":{"id":{"type":"string","pattern":"^p_[0-9]+$"}}}}}},
		{"type":"TRACK","key":"B","jsonSchema":{"properties":{"properties":{"properties":{"id":{"type":"string","pattern":"^p_[0-9]+$"}}}}}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	pattern := func(key string) any {
		return p.track[key].schema.Properties["properties"].Properties["id"].Pattern
	}
	if a, b := pattern("A"), pattern("B"); a == nil || a != b {
		t.Errorf("the two rules hold patterns %p and %p, want one", a, b)
	}
	if vs, _ := check(t, p, `{"type":"track","event":"B","properties":{"id":"q_1"}}`, true); len(vs) != 1 {
		t.Errorf("violations %v, want the pattern's", vs)
	}
}

// TestAValuesOwnViolationsComeBeforeItsMembers: the first violation is
// what a blocked event's answer names, so the walk keeps the library's
// order: an object's missing members, an array's length, then what its
// members or items break, in the event's order.
func TestAValuesOwnViolationsComeBeforeItsMembers(t *testing.T) {
	p, err := Parse([]byte(`{"rules":[{"type":"TRACK","key":"E","jsonSchema":{"properties":{"properties":{"required":["a","z"],"properties":{
		"b":{"type":"string"},"c":{"type":"string"},"l":{"type":"array","minItems":3,"items":{"type":"string"}}}}}}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	vs, _ := check(t, p, `{"type":"track","event":"E","properties":{"b":1,"c":2,"l":[1]}}`, true)
	var got []string
	for _, v := range vs {
		got = append(got, v.Type+" "+v.Field)
	}
	want := []string{"Required properties.a", "Required properties.z", "Type properties.b", "Type properties.c", "Other properties.l", "Type properties.l.0"}
	if !slices.Equal(got, want) {
		t.Errorf("violations in the order %q, want %q", got, want)
	}
}

// TestNumberComparisonsAreExact holds the fast comparisons of a number's
// text with a bound, and the integer test, to exact arithmetic, where
// floats merge values close to the bound.
func TestNumberComparisonsAreExact(t *testing.T) {
	bounds := []string{"1", "0", "-3", "999999999999999", "1000000000000000000", "0.5"}
	values := []string{"1", "0.99999999999999999", "1.00000000000000001", "1.0", "-3", "-3.0000000000000001",
		"999999999999999", "999999999999998.9999", "1000000000000000001", "-0", "2e0", "0.5", "0.50000000000000001"}
	for _, bs := range bounds {
		br, _ := new(big.Rat).SetString(bs)
		b := newNumBound(br)
		for _, vs := range values {
			vr, _ := new(big.Rat).SetString(vs)
			if got, want := b.compare([]byte(vs)), vr.Cmp(br); got != want {
				t.Errorf("%s against the bound %s: %d, want %d", vs, bs, got, want)
			}
		}
	}
	for _, vs := range values {
		vr, _ := new(big.Rat).SetString(vs)
		if got, want := isInteger(vs), vr.IsInt(); got != want {
			t.Errorf("isInteger(%s) = %v, want %v", vs, got, want)
		}
	}
}

// TestRulesWalkedTogetherFindWhatEachFindsAlone: the COMMON rules and the
// event's own are walked in one pass; the violations are each rule's, in
// the order its walk alone finds them, the COMMON rules' first (the
// answer lists the first one).
func TestRulesWalkedTogetherFindWhatEachFindsAlone(t *testing.T) {
	p := loadTestPlan(t)
	for _, event := range []string{
		`{"type":"track","event":"Order Completed","context":{"app":1,"ip":"x"},"properties":{"revenue":"x","products":[{}],"currency":"GBP"}}`,
		`{"context":{"app":[]},"type":"track","properties":{"orderId":1},"event":"Order Completed"}`,
		`{"type":"page","name":"Pricing","context":{"app":"a"},"properties":{}}`,
	} {
		b := []byte(event)
		typ, name := SubjectJSON(b)
		var alone []Violation
		r := p.track[name]
		if typ == "page" {
			r = p.byName["PAGE"][name]
		}
		for _, rule := range append(slices.Clone(p.common), r) {
			w := &walker{lists: make([][]Violation, 1)}
			w.validate(rule.fast, b, 0)
			alone = append(alone, w.vs...)
		}
		together, _ := p.CheckJSON(b, typ, name, true)
		if len(alone) < 2 || !slices.Equal(together, alone) {
			t.Errorf("%s:\n together %v\n alone    %v", event, together, alone)
		}
	}
}

// FuzzShapePatternAgreesWithRegexp: a pattern simplePattern takes
// matches what Go's regexp matches, on any text.
func FuzzShapePatternAgreesWithRegexp(f *testing.F) {
	for _, c := range [][2]string{
		{`^prod_[0-9a-f]+$`, "prod_0af3"}, {`^prod_[0-9a-f]+$`, "prod_"}, {`^prod_[0-9a-f]+$`, "prod_0aX"},
		{`^[A-Z]{3}$`, "USD"}, {`^[A-Z]{3}$`, "US"}, {`^[A-Z]{2,3}-[0-9]*$`, "AB-"},
		{`^[a-z]+_[0-9]+$`, "order_12"}, {`^v?[0-9]+\.[0-9]+$`, "v1.2"}, {`^[^a]$`, "é"},
		{`^a[a-z]+$`, "ab"}, {`^[a-z]+a$`, "aba"}, {`^(?i)abc$`, "ABC"}, {`^ab+$`, "abbb"},
		{`^[0-9]{4}-[0-9]{2}-[0-9]{2}$`, "2026-12-08"}, {`prod_[0-9]`, "x prod_1 y"},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, pattern, text string) {
		re, err := regexp.Compile(pattern)
		if err != nil {
			return
		}
		p, ok := simplePattern(pattern)
		if !ok {
			return
		}
		if got, want := p.MatchString(text), re.MatchString(text); got != want {
			t.Fatalf("%q on %q: %v, Go's regexp %v", pattern, text, got, want)
		}
	})
}

// TestIdShapedPatternsAreMatchedInOnePass: the patterns a plan uses for
// ids are taken by simplePattern; the rest are left to Go's regexp.
func TestIdShapedPatternsAreMatchedInOnePass(t *testing.T) {
	for pattern, simple := range map[string]bool{
		`^prod_[0-9a-f]+$`:             true,
		`^[A-Z]{3}$`:                   true,
		`^[0-9]{4}-[0-9]{2}-[0-9]{2}$`: true,
		`^[a-z]+_[0-9]+$`:              true,
		`^[a-z]+a$`:                    false, // the repeat would take the a
		`^v?v[0-9]$`:                   false,
		`prod_[0-9]`:                   false, // unanchored
		`^(?i)abc$`:                    false,
		`^(ab)+$`:                      false,
		`^[^a]+$`:                      false, // matches beyond ASCII
		`^é$`:                          false,
	} {
		if _, ok := simplePattern(pattern); ok != simple {
			t.Errorf("simplePattern(%q): %v, want %v", pattern, ok, simple)
		}
	}
}
