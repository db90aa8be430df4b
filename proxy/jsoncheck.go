package proxy

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// The checks below find what fastjson takes but JSON does not: numbers
// that are not strict JSON or do not fit a float64, and escapes that are
// not JSON's. They run before anything is written (see jsonw.go).

var (
	errBadNumber      = errors.New("invalid number")
	errNumberTooLarge = errors.New("number is out of the range of a 64-bit float")
)

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
