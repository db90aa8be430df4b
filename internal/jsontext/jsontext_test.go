package jsontext

import (
	"testing"

	"github.com/valyala/fastjson"
)

func TestValueEnd(t *testing.T) {
	for _, c := range []struct {
		text string
		i    int
		end  int
		ok   bool
	}{
		{`"a\"b",`, 0, 6, true},
		{`"a\\",`, 0, 5, true},
		{`{"a":["]",{"b":"}"}],"c":1} x`, 0, 27, true},
		{`[1, 2 ,3] `, 0, 9, true},
		{`12.5e3}`, 0, 6, true},
		{`true ,`, 0, 4, true},
		{`{"a":1,"b":null}`, 11, 15, true},
		{`12`, 0, 0, false},         // a number must be followed by what ends it
		{`"abc`, 0, 0, false},       // unterminated
		{`{"a":[1,2}`, 0, 0, false}, // unbalanced
		{`"a\"`, 0, 0, false},
		{``, 0, 0, false},
		{`,`, 0, 0, false},
	} {
		if end, ok := ValueEnd([]byte(c.text), c.i); end != c.end || ok != c.ok {
			t.Errorf("ValueEnd(%q, %d) = %d, %v; want %d, %v", c.text, c.i, end, ok, c.end, c.ok)
		}
	}
}

func TestKindAgreesWithFastjson(t *testing.T) {
	for _, v := range []string{`{}`, `[]`, `""`, `true`, `false`, `null`, `-1`, `0.5`} {
		if got, want := Kind(v[0]), fastjson.MustParse(v).Type(); got != want {
			t.Errorf("Kind(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestSkipSpace(t *testing.T) {
	if i := SkipSpace([]byte(" \t\r\n x"), 0); i != 5 {
		t.Errorf("SkipSpace = %d, want 5", i)
	}
	if i := SkipSpace([]byte("  "), 0); i != 2 {
		t.Errorf("SkipSpace of white space only = %d, want 2", i)
	}
}
