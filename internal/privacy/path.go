package privacy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spillwayhq/spillway/internal/segment"
)

// Path is a parsed dotted path: one pattern per level.
type Path []string

// String is the path as it was written.
func (p Path) String() string { return strings.Join(p, ".") }

// ParsePath parses a dotted path such as "traits.email" or
// "properties.*_token".
func ParsePath(s string) (Path, error) {
	if s == "" {
		return nil, errors.New("empty path")
	}
	p := Path(strings.Split(s, "."))
	for _, k := range p {
		if k == "" {
			return nil, fmt.Errorf("path %q has an empty key", s)
		}
	}
	return p, nil
}

// ParsePaths parses a comma list of paths, as drop= and --drop-field take
// them. A path that would remove or hide what spillway and every
// destination rely on (messageId, type, the timestamps) is refused.
func ParsePaths(list string) ([]Path, error) {
	var out []Path
	for _, s := range strings.Split(list, ",") {
		p, err := ParsePath(strings.TrimSpace(s))
		if err != nil {
			return nil, err
		}
		if len(p) == 1 {
			for _, f := range protected {
				if Match(p[0], f) {
					return nil, fmt.Errorf("path %q: %s cannot be dropped or hashed (nor messageId, type and the timestamps)", p, f)
				}
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// protected are the fields a rule may not touch: messageId removes
// duplicates downstream, type says what the event is, and the timestamps
// are rewritten by spillway and read by every destination.
var protected = []string{
	segment.FieldMessageID, segment.FieldType, segment.FieldTimestamp,
	segment.FieldOriginalTimestamp, segment.FieldReceivedAt, segment.FieldSentAt,
}

// Match reports whether key matches pattern, in which '*' stands for any
// run of characters, the empty one included.
func Match(pattern, key string) bool {
	// The classic greedy match with one backtrack point: on a mismatch,
	// the last '*' takes one character more.
	p, k := 0, 0
	star, mark := -1, 0
	for k < len(key) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, k
			p++
		case p < len(pattern) && pattern[p] == key[k]:
			p++
			k++
		case star >= 0:
			mark++
			p, k = star+1, mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
