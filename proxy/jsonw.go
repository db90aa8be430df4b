package proxy

import (
	"encoding/binary"
	"errors"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// The writer below re-encodes what fastjson parsed instead of calling its
// MarshalTo, because fastjson is lenient in ways that would put invalid JSON
// in the spool: it re-escapes strings with strconv.AppendQuote (\x01, \v and
// \U0001f600 are not JSON escapes), passes through raw control characters
// and invalid UTF-8, and accepts NaN, Inf, +1 and 1.2.3 as numbers. Every
// stored event must be valid JSON, since forwarders send it as it is.

var errBadNumber = errors.New("invalid number")

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
		return dst, nil
	case fastjson.TypeTrue:
		return append(dst, "true"...), nil
	case fastjson.TypeFalse:
		return append(dst, "false"...), nil
	default:
		return append(dst, "null"...), nil
	}
}

func appendObject(dst []byte, o *fastjson.Object) ([]byte, error) {
	var err error
	first := true
	dst = append(dst, '{')
	o.Visit(func(k []byte, v *fastjson.Value) {
		if err != nil {
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
	return append(dst, '}'), err
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
