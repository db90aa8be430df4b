package privacy

import (
	"bytes"
	"encoding/json"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzMatch holds Match to a regular expression built from the pattern.
func FuzzMatch(f *testing.F) {
	f.Fuzz(func(t *testing.T, pattern, key string) {
		if !utf8.ValidString(pattern) || !utf8.ValidString(key) {
			return // the regexp reads runes, Match bytes
		}
		parts := strings.Split(pattern, "*")
		for i, p := range parts {
			parts[i] = regexp.QuoteMeta(p)
		}
		re := regexp.MustCompile(`(?s)\A` + strings.Join(parts, ".*") + `\z`)
		if got, want := Match(pattern, key), re.MatchString(key); got != want {
			t.Fatalf("Match(%q, %q) = %v, the regexp says %v", pattern, key, got, want)
		}
	})
}

// FuzzRules applies drop and hash lists to an event and checks the result
// against encoding/json's reading of both: valid JSON; nothing a drop
// path reaches; every value a hash path reaches a hex HMAC; and everything
// else as it was.
func FuzzRules(f *testing.F) {
	f.Fuzz(func(t *testing.T, event []byte, drop, hash string) {
		if !utf8.Valid(event) || !json.Valid(event) || !utf8.ValidString(drop+hash) {
			return
		}
		var dropPaths, hashPaths []Path
		var err error
		if drop != "" {
			if dropPaths, err = ParsePaths(drop); err != nil {
				return
			}
		}
		if hash != "" {
			if hashPaths, err = ParsePaths(hash); err != nil {
				return
			}
		}
		r, err := New(dropPaths, hashPaths, IPKeep, []byte("fuzz"))
		if err != nil {
			t.Fatal(err)
		}
		out, err := r.Apply(nil, event)
		if err != nil {
			t.Fatalf("Apply(%s): %v", event, err)
		}
		if !json.Valid(out) {
			t.Fatalf("Apply(%s) = %s, not JSON", event, out)
		}
		in, got := decodeNumbers(t, event), decodeNumbers(t, out)
		if _, ok := in.(map[string]any); !ok {
			if !bytes.Equal(out, event) {
				t.Fatalf("Apply changed %s, which is not an object, into %s", event, out)
			}
			return
		}
		for _, p := range dropPaths {
			walk(got, p, func(parent map[string]any, k string) {
				t.Fatalf("%s: %q survived drop %s", out, k, p)
			})
		}
		for _, p := range hashPaths {
			walk(got, p, func(parent map[string]any, k string) {
				if s, ok := parent[k].(string); !ok || len(s) != 64 || strings.Trim(s, "0123456789abcdef") != "" {
					t.Fatalf("%s: %q is %v after hash %s", out, k, parent[k], p)
				}
			})
		}
		for _, p := range append(dropPaths, hashPaths...) {
			remove(in, p)
			remove(got, p)
		}
		if !reflect.DeepEqual(in, got) {
			t.Fatalf("Apply(%s) = %s: changed more than its paths", event, out)
		}
	})
}

func decodeNumbers(t *testing.T, b []byte) any {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// walk calls fn for each member the path reaches, through objects only.
func walk(v any, p Path, fn func(parent map[string]any, k string)) {
	o, ok := v.(map[string]any)
	if !ok {
		return
	}
	for k, c := range o {
		if !Match(p[0], k) {
			continue
		}
		if len(p) == 1 {
			fn(o, k)
		} else {
			walk(c, p[1:], fn)
		}
	}
}

func remove(v any, p Path) {
	walk(v, p, func(parent map[string]any, k string) { delete(parent, k) })
}
