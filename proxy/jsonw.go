package proxy

import (
	"encoding/binary"
	"errors"
	"strconv"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// The writer below re-encodes what fastjson parsed instead of calling its
// MarshalTo, because fastjson is lenient in ways that would put invalid JSON
// in the spool: it re-escapes strings with strconv.AppendQuote (\x01, \v and
// \U0001f600 are not JSON escapes), passes through raw control characters
// and invalid UTF-8, and accepts NaN, Inf, +1 and 1.2.3 as numbers. Every
// stored event must be valid JSON, since forwarders send it as it is.

var (
	errBadNumber      = errors.New("invalid number")
	errNumberTooLarge = errors.New("number is out of the range of a 64-bit float")
)

const hexDigits = "0123456789abcdef"

// safeASCII[c] is true for the ASCII bytes a JSON string may carry as they are.
var safeASCII = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD, as
// encoding/json does, so the output is always valid UTF-8.
func appendString(dst, s []byte) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		// Skip eight plain ASCII bytes at a time: most of an event's
		// bytes are, and this loop is the hottest of the proxy.
		for i+8 <= len(s) && plainWord(binary.LittleEndian.Uint64(s[i:])) {
			i += 8
		}
		if i == len(s) {
			break
		}
		c := s[i]
		if c < utf8.RuneSelf {
			if safeASCII[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// plainWord reports whether none of w's eight bytes is a control
// character, '"', '\\' or non-ASCII (bit tricks from "Bit Twiddling Hacks":
// hasless and haszero are exact as yes/no answers).
func plainWord(w uint64) bool {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	ctl := (w - 0x20*lo) &^ w
	q := w ^ ('"' * lo)
	q = (q - lo) &^ q
	bs := w ^ ('\\' * lo)
	bs = (bs - lo) &^ bs
	return (ctl|q|bs|w)&hi == 0
}

// appendValue appends v as strict JSON.
func appendValue(dst []byte, v *fastjson.Value) ([]byte, error) {
	switch v.Type() {
	case fastjson.TypeObject:
		o, _ := v.Object()
		return appendObject(dst, o)
	case fastjson.TypeArray:
		a, _ := v.Array()
		dst = append(dst, '[')
		for i, e := range a {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = appendValue(dst, e); err != nil {
				return dst, err
			}
		}
		return append(dst, ']'), nil
	case fastjson.TypeString:
		s, _ := v.StringBytes()
		return appendString(dst, s), nil
	case fastjson.TypeNumber:
		n := len(dst)
		dst = v.MarshalTo(dst)
		if !validNumber(dst[n:]) {
			return dst, errBadNumber
		}
		if !numberInRange(dst[n:]) {
			return dst, errNumberTooLarge
		}
		return dst, nil
	case fastjson.TypeTrue:
		return append(dst, "true"...), nil
	case fastjson.TypeFalse:
		return append(dst, "false"...), nil
	default:
		return append(dst, "null"...), nil
	}
}

// appendObject appends o with each repeated key written once, its last
// value winning (see overridden). Small objects are written in one pass
// that watches for a repeated key, and written again only if one may be.
func appendObject(dst []byte, o *fastjson.Object) ([]byte, error) {
	if o.Len() > smallObject {
		dst, _, err := appendFields(dst, o, overridden(o), false)
		return dst, err
	}
	start := len(dst)
	dst, maybe, err := appendFields(dst, o, nil, o.Len() > 1)
	if maybe {
		if over := overridden(o); over != nil {
			dst, _, err = appendFields(dst[:start], o, over, false)
		} else {
			dst, _, err = appendFields(dst[:start], o, nil, false)
		}
	}
	return dst, err
}

// appendFields appends o without the fields over marks. With watch, it
// stops as soon as a key may repeat one before it, returning maybe.
func appendFields(dst []byte, o *fastjson.Object, over []bool, watch bool) (_ []byte, maybe bool, err error) {
	var seen keyPrints
	first := true
	i := -1
	dst = append(dst, '{')
	o.Visit(func(k []byte, v *fastjson.Value) {
		i++
		if err != nil || maybe || (over != nil && over[i]) {
			return
		}
		if watch && seen.add(k) {
			maybe = true
			return
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendString(dst, k)
		dst = append(dst, ':')
		dst, err = appendValue(dst, v)
	})
	return append(dst, '}'), maybe, err
}

// smallObject is the most fields an object may have for its repeated keys
// to be found without allocating. Most objects of an event are this small.
const smallObject = 16

// keyPrints holds a print of each key of a small object: its length and its
// first, middle and last bytes, which nearly always tell keys apart, so that
// the usual object is checked for repeated keys without comparing bytes.
type keyPrints struct {
	n      int
	prints [smallObject]uint32
}

// add records k and reports whether it may repeat a key added before:
// false means it surely does not.
func (p *keyPrints) add(k []byte) bool {
	var fp uint32
	if n := len(k); n > 0 {
		fp = uint32(n)<<24 | uint32(k[0])<<16 | uint32(k[n/2])<<8 | uint32(k[n-1])
	}
	for _, q := range p.prints[:p.n] {
		if q == fp {
			return true
		}
	}
	if p.n < smallObject {
		p.prints[p.n] = fp
		p.n++
	}
	return false
}

// overridden returns, for each field of o in order, whether a later field
// has the same key; nil when no key repeats. The last field of a key wins,
// as in encoding/json (Segment's API), JavaScript and Python, and only it is
// stored: every consumer then reads the value spillway validated, whether
// its parser keeps the first, the last or refuses duplicates (Go's
// encoding/json/v2, serde).
func overridden(o *fastjson.Object) []bool {
	n := o.Len()
	if n < 2 {
		return nil
	}
	if n <= smallObject {
		var seen keyPrints
		maybe := false
		o.Visit(func(k []byte, _ *fastjson.Value) {
			maybe = maybe || seen.add(k)
		})
		if !maybe {
			return nil
		}
	}
	// A map keeps a hostile object of 100,000 keys linear.
	last := make(map[string]int, n)
	i := 0
	o.Visit(func(k []byte, _ *fastjson.Value) {
		last[unsafeString(k)] = i
		i++
	})
	if len(last) == n {
		return nil
	}
	over := make([]bool, n)
	i = 0
	o.Visit(func(k []byte, _ *fastjson.Value) {
		over[i] = last[unsafeString(k)] != i
		i++
	})
	return over
}

// keyLookup answers whether an object has a key, in constant time per key
// for objects past smallObject (Object.Get scans).
type keyLookup struct {
	o   *fastjson.Object
	set map[string]struct{}
}

func newKeyLookup(o *fastjson.Object) keyLookup {
	l := keyLookup{o: o}
	if o.Len() > smallObject {
		l.set = make(map[string]struct{}, o.Len())
		o.Visit(func(k []byte, _ *fastjson.Value) { l.set[unsafeString(k)] = struct{}{} })
	}
	return l
}

func (l keyLookup) has(k []byte) bool {
	if l.set != nil {
		_, ok := l.set[unsafeString(k)]
		return ok
	}
	return l.o.Get(unsafeString(k)) != nil
}

// numberInRange reports whether b, a valid JSON number, fits a float64.
// Consumers choke on 1e400 or a 5,000-digit integer: Go's encoding/json
// (Segment's API) refuses it, JavaScript reads Infinity, Python refuses
// integers of over 4,300 digits. Under 309 digits without an exponent a
// number cannot overflow, so the usual number costs no parsing.
func numberInRange(b []byte) bool {
	if len(b) < 309 {
		exp := false
		for _, c := range b {
			exp = exp || c|0x20 == 'e'
		}
		if !exp {
			return true
		}
	}
	_, err := strconv.ParseFloat(unsafeString(b), 64)
	return err == nil
}

// validNumber reports whether b is a number as RFC 8259 spells it.
func validNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	return i == len(b)
}
