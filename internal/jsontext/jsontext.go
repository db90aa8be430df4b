// Package jsontext reads JSON text in place, without building values: where
// a value starts and ends, and its type. The proxy splices and checks the
// events it stores with it, and the tracking plan's walk reads them with it.
// It judges brackets, quotes and escapes only; what it is given is JSON a
// parser has already accepted.
package jsontext

import "github.com/valyala/fastjson"

// Kind is the type of the JSON value whose first byte is c.
func Kind(c byte) fastjson.Type {
	switch c {
	case '{':
		return fastjson.TypeObject
	case '[':
		return fastjson.TypeArray
	case '"':
		return fastjson.TypeString
	case 't':
		return fastjson.TypeTrue
	case 'f':
		return fastjson.TypeFalse
	case 'n':
		return fastjson.TypeNull
	}
	return fastjson.TypeNumber
}

// SkipSpace returns the index of the first byte from i that is not JSON
// white space.
func SkipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// ValueEnd returns the index past the JSON value that starts at b[i], and
// false if b ends before it does (a number or literal ends at the byte
// after it, which must be there).
func ValueEnd(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, ok := stringEnd(b, j)
				if !ok {
					return 0, false
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1, true
				}
			}
		}
		return 0, false
	}
	for j := i; j < len(b); j++ {
		if c := b[j]; c == ',' || c == '}' || c == ']' || isSpace(c) {
			return j, j > i
		}
	}
	return 0, false
}

// stringEnd returns the index past the JSON string that starts at b[i].
// Strings in events are short: a loop beats bytes.IndexByte's call.
func stringEnd(b []byte, i int) (int, bool) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '"':
			return j + 1, true
		case '\\':
			j++
		}
	}
	return 0, false
}
