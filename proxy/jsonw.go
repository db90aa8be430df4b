package proxy

import (
	"bytes"
	"encoding/binary"
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

// unsafeString views b as a string without copying. Only for calls that
// do not keep their argument past the request (time.Parse keeps it only in
// an error we drop; Object.Get compares it).
func unsafeString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}
