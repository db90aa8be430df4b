package proxy

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"strings"

	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/internal/jsontext"
)

// Beyond these the fast path declines.
const (
	fastMaxDepth = 32
	fastMaxKeys  = 32 // per object: repeated keys are found by comparing with each earlier one
)

// fastScan reads JSON from b at i and appends it to out as stored.
type fastScan struct {
	b    []byte
	i    int
	out  []byte
	keys []int32 // the keys of the objects being read, innermost last: start and end in b
	junk []byte  // where values read only to be checked are copied
}

func (s *fastScan) ws() {
	for s.i < len(s.b) && s.b[s.i] <= ' ' {
		switch s.b[s.i] {
		case ' ', '\n', '\t', '\r':
			s.i++
		default:
			return
		}
	}
}

// fieldValue copies a top-level field's value, reading it as a scalar
// (with a string's contents as written: esc reports escapes in them).
func (s *fastScan) fieldValue() (sc scalar, esc, ok bool) {
	if s.i >= len(s.b) {
		return sc, false, false
	}
	start := s.i
	if s.b[s.i] == '"' {
		if esc, ok = s.str(); ok {
			sc = scalar{set: true, t: fastjson.TypeString, s: s.b[start+1 : s.i-1]}
		}
		return sc, esc, ok
	}
	return scalar{set: true, t: jsontext.Kind(s.b[start])}, false, s.value(1)
}

// discard reads a value as fieldValue does, without copying it to out.
func (s *fastScan) discard() (sc scalar, esc, ok bool) {
	out := s.out
	s.out = s.junk[:0]
	sc, esc, ok = s.fieldValue()
	s.junk, s.out = s.out, out
	return sc, esc, ok
}

// value copies the value at s.i.
func (s *fastScan) value(depth int) bool {
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		_, ok := s.str()
		return ok
	case c == '{':
		return depth < fastMaxDepth && s.object(depth+1)
	case c == '[':
		return depth < fastMaxDepth && s.array(depth+1)
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	}
	return false
}

// fields reads the object at s.i without copying it, calling field with
// each key (which has no escapes) once the reader is at its value, which
// field reads.
func (s *fastScan) fields(field func(k []byte) bool) bool {
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return false
	}
	base := len(s.keys)
	defer func() { s.keys = s.keys[:base] }()
	if s.open('}', false) {
		return true
	}
	for {
		k, esc, ok := s.key(base, false)
		if !ok || esc || !field(k) {
			return false
		}
		if more, ok := s.next('}', false); !more {
			return ok
		}
	}
}

// object copies the object at s.i.
func (s *fastScan) object(depth int) bool {
	base := len(s.keys)
	defer func() { s.keys = s.keys[:base] }()
	if s.open('}', true) {
		return true
	}
	for {
		if _, _, ok := s.key(base, true); !ok {
			return false
		}
		s.out = append(s.out, ':')
		if !s.value(depth) {
			return false
		}
		if more, ok := s.next('}', true); !more {
			return ok
		}
	}
}

// key reads a key and its colon, copying the key if asked. A key the
// object already has (among s.keys[base:]) is declined: the last would
// win, which only the tree parser sorts out. Keys are compared as written:
// the fast path takes only strings written one way.
func (s *fastScan) key(base int, copying bool) (k []byte, esc, ok bool) {
	if s.i >= len(s.b) || s.b[s.i] != '"' || len(s.keys)-base >= 2*fastMaxKeys {
		return nil, false, false
	}
	start := s.i
	if copying {
		esc, ok = s.str()
	} else {
		esc, ok = s.skipStr()
	}
	if !ok {
		return nil, false, false
	}
	k = s.b[start+1 : s.i-1]
	for j := base; j < len(s.keys); j += 2 {
		if int(s.keys[j+1]-s.keys[j]) == len(k) && string(s.b[s.keys[j]:s.keys[j+1]]) == string(k) {
			return nil, false, false
		}
	}
	s.keys = append(s.keys, int32(start+1), int32(s.i-1))
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != ':' {
		return nil, false, false
	}
	s.i++
	s.ws()
	return k, esc, s.i < len(s.b) // a value follows
}

func (s *fastScan) array(depth int) bool {
	if s.open(']', true) {
		return true
	}
	for {
		if !s.value(depth) {
			return false
		}
		if more, ok := s.next(']', true); !more {
			return ok
		}
	}
}

// open moves past the opening bracket at s.i and reports whether the
// closing one follows at once, moving past it too. With copying, it copies
// what it moves past but whitespace.
func (s *fastScan) open(closing byte, copying bool) (empty bool) {
	if copying {
		s.out = append(s.out, s.b[s.i])
	}
	s.i++
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != closing {
		return false
	}
	if copying {
		s.out = append(s.out, closing)
	}
	s.i++
	return true
}

// next moves past what follows a member of an object or array: a comma
// (more) or its closing bracket; ok is false for anything else. With
// copying, it copies what it moves past but whitespace.
func (s *fastScan) next(closing byte, copying bool) (more, ok bool) {
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != ',' && s.b[s.i] != closing {
		return false, false
	}
	more = s.b[s.i] == ','
	if copying {
		s.out = append(s.out, s.b[s.i])
	}
	s.i++
	if more {
		s.ws()
	}
	return more, true
}

func (s *fastScan) literal(word string) bool {
	if !bytes.HasPrefix(s.b[s.i:], []byte(word)) {
		return false
	}
	s.out = append(s.out, word...)
	s.i += len(word)
	return true
}

// number copies a number: the run of bytes fastjson takes as one, valid
// and in range as checkNumbers requires.
func (s *fastScan) number() bool {
	j := s.i
	for j < len(s.b) {
		c := s.b[j]
		if c >= '0' && c <= '9' || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E' {
			j++
			continue
		}
		break
	}
	n := s.b[s.i:j]
	if !validNumber(n) || !numberInRange(n) {
		return false
	}
	s.out = append(s.out, n...)
	s.i = j
	return true
}

// str copies the string at s.i, quotes included, if appendString would
// write it as it is; esc reports escapes in it.
func (s *fastScan) str() (esc, ok bool) {
	start := s.i
	esc, ok = s.skipStr()
	if ok {
		s.out = append(s.out, s.b[start:s.i]...)
	}
	return esc, ok
}

// skipStr moves past the string at s.i if appendString would write it as
// it is: no control characters, and only the escapes it writes. The body
// is valid UTF-8, which appendString writes as it is.
func (s *fastScan) skipStr() (esc, ok bool) {
	b := s.b
	i := s.i + 1
	for {
		// Eight bytes at a time to the next quote, backslash or control
		// character.
		for i+8 <= len(b) {
			if m := stringStops(binary.LittleEndian.Uint64(b[i:])); m != 0 {
				i += bits.TrailingZeros64(m) >> 3
				break
			}
			i += 8
		}
		if i >= len(b) {
			return false, false
		}
		switch c := b[i]; {
		case c == '"':
			s.i = i + 1
			return esc, true
		case c == '\\':
			n := storedEscape(b[i:])
			if n == 0 {
				return false, false
			}
			esc = true
			i += n
		case c < 0x20:
			return false, false
		default:
			i++ // a false stop past the first of a word
		}
	}
}

// storedEscape returns the length of the escape sequence at the start of
// e if appendString writes its character that way, else 0.
func storedEscape(e []byte) int {
	if len(e) < 2 {
		return 0
	}
	switch e[1] {
	case '"', '\\', 'n', 'r', 't':
		return 2
	case 'u':
		// \u00XX, lowercase, for a control character but \n, \r and \t.
		if len(e) < 6 || e[2] != '0' || e[3] != '0' || (e[4] != '0' && e[4] != '1') {
			return 0
		}
		lo := strings.IndexByte(hexDigits, e[5])
		if lo < 0 {
			return 0
		}
		switch c := (e[4]-'0')<<4 | byte(lo); c {
		case '\n', '\r', '\t':
			return 0
		}
		return 6
	}
	return 0
}
