package proxy

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"

	"github.com/valyala/fastjson"
)

// The writer below re-encodes what fastjson parsed instead of calling its
// MarshalTo, because fastjson is lenient in ways that would put invalid JSON
// in the spool: it re-escapes strings with strconv.AppendQuote (\x01, \v and
// \U0001f600 are not JSON escapes), passes through raw control characters
// and invalid UTF-8, and accepts NaN, Inf, +1 and 1.2.3 as numbers. Every
// stored event must be valid JSON, since forwarders send it as it is.
// fastjson also keeps invalid escapes as text, and decodes a lone UTF-16
// surrogate escape into its six characters or swallows the escape after
// it: checkEscapes runs first.

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
// character, '"', '\\' or non-ASCII.
func plainWord(w uint64) bool { return specialBytes(w) == 0 }

// specialBytes has the high bit set of w's bytes that are a control
// character, '"', '\\' or non-ASCII. Bytes past the first such one may be
// flagged wrongly, so only its lowest bit is exact.
func specialBytes(w uint64) uint64 { return stringStops(w) | w&0x8080808080808080 }

// stringStops has the high bit set of w's bytes that are a control
// character, '"' or '\\' (bit tricks from "Bit Twiddling Hacks": hasless
// and haszero), with specialBytes' caveat.
func stringStops(w uint64) uint64 {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	ctl := (w - 0x20*lo) &^ w
	q := w ^ ('"' * lo)
	q = (q - lo) &^ q
	bs := w ^ ('\\' * lo)
	bs = (bs - lo) &^ bs
	return (ctl | q | bs) & hi
}

// checkNumbers returns the first number in v that is not strict JSON (01,
// +1, NaN: fastjson takes them) or is beyond a 64-bit float. It looks at
// every value, the ones a repeated key overrides too, since the body must
// be JSON as a whole; the writer below then copies numbers as they are.
// buf holds each number's text: fastjson gives it only by copying.
func checkNumbers(v *fastjson.Value, buf *[]byte) error {
	switch v.Type() {
	case fastjson.TypeObject:
		o, _ := v.Object()
		var err error
		o.Visit(func(_ []byte, v *fastjson.Value) {
			if err == nil {
				err = checkNumbers(v, buf)
			}
		})
		return err
	case fastjson.TypeArray:
		a, _ := v.Array()
		for _, e := range a {
			if err := checkNumbers(e, buf); err != nil {
				return err
			}
		}
	case fastjson.TypeNumber:
		*buf = v.MarshalTo((*buf)[:0])
		if !validNumber(*buf) {
			return errBadNumber
		}
		if !numberInRange(*buf) {
			return errNumberTooLarge
		}
	}
	return nil
}

// appendValue appends v as strict JSON; its numbers have passed
// checkNumbers.
func appendValue(dst []byte, v *fastjson.Value) []byte {
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
			dst = appendValue(dst, e)
		}
		return append(dst, ']')
	case fastjson.TypeString:
		s, _ := v.StringBytes()
		return appendString(dst, s)
	case fastjson.TypeNumber:
		return v.MarshalTo(dst)
	case fastjson.TypeTrue:
		return append(dst, "true"...)
	case fastjson.TypeFalse:
		return append(dst, "false"...)
	default:
		return append(dst, "null"...)
	}
}

// appendObject appends o with each repeated key written once, its last
// value winning (see overridden).
func appendObject(dst []byte, o *fastjson.Object) []byte {
	if o.Len() > smallObject {
		return appendFields(dst, o, overridden(o))
	}
	// A small object is written in one pass, and a field that a later one
	// overrides is cut out of dst when that one comes. Writing the object
	// again instead would write its nested objects again too, at every
	// level: 2^depth work for a hostile body.
	var w writtenFields
	dst = append(dst, '{')
	o.Visit(func(k []byte, v *fastjson.Value) {
		dst = w.appendKey(dst, k)
		dst = appendValue(dst, v)
	})
	return append(dst, '}')
}

// appendFields appends o without the fields over marks.
func appendFields(dst []byte, o *fastjson.Object, over []bool) []byte {
	first := true
	i := -1
	dst = append(dst, '{')
	o.Visit(func(k []byte, v *fastjson.Value) {
		i++
		if over != nil && over[i] {
			return
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendString(dst, k)
		dst = append(dst, ':')
		dst = appendValue(dst, v)
	})
	return append(dst, '}')
}

// smallObject is the most fields an object may have for its repeated keys
// to be handled without allocating. Most objects of an event are this small.
const smallObject = 16

// keyPrint is k's length and first, middle and last bytes, which nearly
// always tell two keys apart without comparing them.
func keyPrint(k []byte) uint32 {
	n := len(k)
	if n == 0 {
		return 0
	}
	return uint32(n)<<24 | uint32(k[0])<<16 | uint32(k[n/2])<<8 | uint32(k[n-1])
}

// writtenFields tracks the fields of a small object written so far, as
// offsets in dst: where each starts (at its comma, but for the first) and
// where its key ends. Keys are compared as written: appendString maps
// equal keys, and only those, to equal bytes.
type writtenFields struct {
	n       int
	prints  [smallObject]uint32
	starts  [smallObject]int32
	keyEnds [smallObject]int32
}

// appendKey appends the next field's comma, key and colon. A field written
// earlier under the same key is cut out of dst first: the last one wins.
func (w *writtenFields) appendKey(dst, k []byte) []byte {
	start := len(dst)
	if w.n > 0 {
		dst = append(dst, ',')
	}
	keyStart := len(dst)
	dst = appendString(dst, k)
	p := keyPrint(dst[keyStart:])
	for j := range w.n {
		from := int(w.starts[j])
		ks := from
		if j > 0 {
			ks++ // past its comma
		}
		if w.prints[j] != p || !bytes.Equal(dst[ks:w.keyEnds[j]], dst[keyStart:]) {
			continue
		}
		to := start // field j is the last one written
		if j+1 < w.n {
			to = int(w.starts[j+1])
		}
		if j == 0 {
			to++ // the next field becomes the first: drop its comma
		}
		cut := to - from
		dst = append(dst[:from], dst[to:]...)
		for i := j + 1; i < w.n; i++ {
			w.prints[i-1] = w.prints[i]
			w.starts[i-1] = w.starts[i] - int32(cut)
			w.keyEnds[i-1] = w.keyEnds[i] - int32(cut)
		}
		w.n--
		start -= cut
		switch {
		case j == 0 && w.n > 0:
			w.starts[0] = int32(from)
		case j == 0:
			start = from
		}
		break // keys written are unique: there is no other
	}
	w.prints[w.n] = p
	w.starts[w.n] = int32(start)
	w.keyEnds[w.n] = int32(len(dst))
	w.n++
	return append(dst, ':')
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
		var prints [smallObject]uint32
		i, maybe := 0, false
		o.Visit(func(k []byte, _ *fastjson.Value) {
			p := keyPrint(k)
			for _, q := range prints[:i] {
				maybe = maybe || p == q
			}
			prints[i] = p
			i++
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

// checkEscapes returns the first escape in the JSON text b that is not
// one (\q, \u12), and b with each \u escape of a lone UTF-16 surrogate
// rewritten as \ufffd, as encoding/json decodes it: a browser sends one for
// a string cut inside an emoji, and the characters around it must arrive
// as sent. b is copied only when something is rewritten.
func checkEscapes(b []byte) ([]byte, error) {
	fixed := b
	i := bytes.IndexByte(b, '\\')
	for i >= 0 {
		n := 2
		switch byteAt(b, i+1) {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		case 'u':
			r, ok := hex4(b, i+2)
			if !ok {
				return nil, fmt.Errorf("invalid escape at byte %d: \\u needs four hex digits", i)
			}
			n = 6
			if utf16.IsSurrogate(r) {
				if lo, ok := hex4(b, i+8); ok && r < 0xdc00 && byteAt(b, i+6) == '\\' && byteAt(b, i+7) == 'u' &&
					lo >= 0xdc00 && lo < 0xe000 {
					n = 12
				} else {
					if &fixed[0] == &b[0] {
						fixed = bytes.Clone(b)
					}
					copy(fixed[i:], `\ufffd`)
				}
			}
		default:
			r, _ := utf8.DecodeRune(b[i+1:])
			return nil, fmt.Errorf("invalid escape \\%c at byte %d", r, i)
		}
		i += n
		j := bytes.IndexByte(b[i:], '\\')
		if j < 0 {
			break
		}
		i += j
	}
	return fixed, nil
}

func byteAt(b []byte, i int) byte {
	if i < len(b) {
		return b[i]
	}
	return 0
}

// hex4 reads the four hex digits at b[i:].
func hex4(b []byte, i int) (rune, bool) {
	var u [2]byte
	if i+4 > len(b) {
		return 0, false
	}
	if _, err := hex.Decode(u[:], b[i:i+4]); err != nil {
		return 0, false
	}
	return rune(u[0])<<8 | rune(u[1]), true
}

// unsafeString views b as a string without copying. Only for calls that
// do not keep their argument past the request (time.Parse keeps it only in
// an error we drop; Object.Get compares it).
func unsafeString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}
