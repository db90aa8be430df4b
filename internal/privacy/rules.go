package privacy

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"net/netip"
	"os"
	"strings"
	"sync"
)

// IPMode is what a rule set does with context.ip.
type IPMode uint8

const (
	IPKeep     IPMode = iota // leave it (the default)
	IPTruncate               // IPv4 to its /24, IPv6 to its /48
	IPDrop                   // remove it
)

// ParseIPMode parses keep, truncate or drop.
func ParseIPMode(s string) (IPMode, error) {
	switch s {
	case "", "keep":
		return IPKeep, nil
	case "truncate":
		return IPTruncate, nil
	case "drop":
		return IPDrop, nil
	}
	return IPKeep, fmt.Errorf("want keep, truncate or drop, got %q", s)
}

func (m IPMode) String() string {
	return [...]string{"keep", "truncate", "drop"}[m]
}

// ipPath is where the IP of the device is, as Segment's SDKs put it.
var ipPath = Path{"context", "ip"}

// ErrNoKey is returned by New for hash paths without a key.
var ErrNoKey = errors.New("privacy: hashing needs a key (--hash-key-file)")

// LoadKey reads a hash key file: its content, surrounding white space
// trimmed, which must not be empty.
func LoadKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err // names the path and the operation
	}
	key := bytes.TrimSpace(b)
	if len(key) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return key, nil
}

// Rules is a compiled rule set. A nil *Rules applies nothing. It is safe
// for concurrent use.
type Rules struct {
	root   *node
	hashes sync.Pool // of *hasher under the key
}

// hasher is an HMAC under the key and room for its sum, pooled together
// so that hashing a value allocates nothing.
type hasher struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

// action is what a path does to the value it reaches. When several paths
// reach one value the strongest wins: drop, then hash, then the IP's.
type action uint8

const (
	actNone action = iota
	actIPTruncate
	actHash
	actDrop
)

// node is one level of the compiled paths.
type node struct {
	edges []edge
	act   action
}

type edge struct {
	pattern string
	literal bool // no '*': compared as it is
	next    *node
}

// New compiles a rule set; nil when it would change nothing. Hashing needs
// key.
func New(drop, hashed []Path, ip IPMode, key []byte) (*Rules, error) {
	if len(hashed) > 0 && len(key) == 0 {
		return nil, ErrNoKey
	}
	root := &node{}
	for _, p := range drop {
		root.add(p, actDrop)
	}
	for _, p := range hashed {
		root.add(p, actHash)
	}
	switch ip {
	case IPTruncate:
		root.add(ipPath, actIPTruncate)
	case IPDrop:
		root.add(ipPath, actDrop)
	}
	if len(root.edges) == 0 {
		return nil, nil
	}
	r := &Rules{root: root}
	key = bytes.Clone(key)
	r.hashes.New = func() any { return &hasher{h: hmac.New(sha256.New, key)} }
	return r, nil
}

func (n *node) add(p Path, a action) {
	for _, k := range p {
		var next *node
		for _, e := range n.edges {
			if e.pattern == k {
				next = e.next
				break
			}
		}
		if next == nil {
			next = &node{}
			n.edges = append(n.edges, edge{pattern: k, literal: !strings.Contains(k, "*"), next: next})
		}
		n = next
	}
	n.act = max(n.act, a)
}

// maxMatch is how many paths' nodes one key can lead on to before the
// walk needs memory of its own.
const maxMatch = 16

// Apply appends event to dst with the rules applied. An event that is not
// a JSON object is appended as it is: it has no fields. A malformed event
// is an error, with dst as it was.
func (r *Rules) Apply(dst, event []byte) ([]byte, error) {
	if r == nil {
		return append(dst, event...), nil
	}
	s := scanner{b: event, r: r}
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return append(dst, event...), nil
	}
	n := len(dst)
	out, err := s.object(dst, []*node{r.root})
	if err == nil {
		s.ws()
		if s.i != len(s.b) {
			err = errMalformed
		}
	}
	if err != nil {
		return dst[:n], fmt.Errorf("apply privacy rules: %w", err)
	}
	return out, nil
}

var errMalformed = errors.New("malformed JSON")

type scanner struct {
	b []byte
	i int
	r *Rules
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// object copies the object at s.i to out, applying what the nodes say to
// its members.
func (s *scanner) object(out []byte, at []*node) ([]byte, error) {
	s.i++ // '{'
	out = append(out, '{')
	first := true
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return append(out, '}'), nil
	}
	var buf [maxMatch]*node
	for {
		s.ws()
		kStart := s.i
		kEnd, esc, err := s.str()
		if err != nil {
			return out, err
		}
		rawKey := s.b[kStart:kEnd]
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return out, errMalformed
		}
		s.i++
		s.ws()
		vStart := s.i
		next, act := s.match(buf[:0], at, rawKey, esc)
		switch {
		case act == actDrop:
			if _, err := s.skip(); err != nil {
				return out, err
			}
		case act == actHash || act == actIPTruncate:
			vEnd, err := s.skip()
			if err != nil {
				return out, err
			}
			if act == actHash {
				out = member(out, &first, rawKey)
				if out, err = s.r.appendHash(out, s.b[vStart:vEnd]); err != nil {
					return out, err
				}
			} else if v := truncateIP(s.b[vStart:vEnd]); v != nil { // nil: dropped
				out = member(out, &first, rawKey)
				out = append(out, v...)
			}
		case len(next) > 0 && s.i < len(s.b) && s.b[s.i] == '{':
			out = member(out, &first, rawKey)
			if out, err = s.object(out, next); err != nil {
				return out, err
			}
		default:
			vEnd, err := s.skip()
			if err != nil {
				return out, err
			}
			out = member(out, &first, rawKey)
			out = append(out, s.b[vStart:vEnd]...)
		}
		s.ws()
		if s.i >= len(s.b) {
			return out, errMalformed
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case '}':
			s.i++
			return append(out, '}'), nil
		default:
			return out, errMalformed
		}
	}
}

func member(out []byte, first *bool, rawKey []byte) []byte {
	if !*first {
		out = append(out, ',')
	}
	*first = false
	out = append(out, rawKey...)
	return append(out, ':')
}

// match returns the nodes the key leads to from at, and the strongest
// action among them.
func (s *scanner) match(next, at []*node, rawKey []byte, esc bool) ([]*node, action) {
	key := rawKey[1 : len(rawKey)-1]
	if esc {
		var k string
		if json.Unmarshal(rawKey, &k) != nil {
			return next, actNone
		}
		key = []byte(k)
	}
	act := actNone
	for _, n := range at {
		for _, e := range n.edges {
			if e.literal && string(key) != e.pattern || !e.literal && !Match(e.pattern, string(key)) {
				continue
			}
			act = max(act, e.next.act)
			if len(e.next.edges) > 0 {
				next = append(next, e.next)
			}
		}
	}
	return next, act
}

// str reads the string at s.i and returns the index past it, and whether
// it holds an escape.
func (s *scanner) str() (end int, esc bool, err error) {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return 0, false, errMalformed
	}
	for j := s.i + 1; j < len(s.b); j++ {
		switch s.b[j] {
		case '\\':
			esc = true
			j++
		case '"':
			s.i = j + 1
			return s.i, esc, nil
		}
	}
	return 0, false, errMalformed
}

// skip passes over the value at s.i and returns the index past it.
func (s *scanner) skip() (int, error) {
	if s.i >= len(s.b) {
		return 0, errMalformed
	}
	switch s.b[s.i] {
	case '"':
		end, _, err := s.str()
		return end, err
	case '{', '[':
		depth := 0
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '"':
				if _, _, err := s.str(); err != nil {
					return 0, err
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					s.i++
					return s.i, nil
				}
			}
			s.i++
		}
		return 0, errMalformed
	}
	start := s.i
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			if s.i == start {
				return 0, errMalformed
			}
			return s.i, nil
		}
		s.i++
	}
	return 0, errMalformed
}

// appendHash appends the JSON string of the hex HMAC of the value's
// text: a string's own, any other value's compact JSON.
func (r *Rules) appendHash(out, raw []byte) ([]byte, error) {
	text := raw
	switch {
	case raw[0] == '"' && bytes.IndexByte(raw, '\\') < 0:
		text = raw[1 : len(raw)-1]
	case raw[0] == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return out, errMalformed
		}
		text = []byte(s)
	case raw[0] == '{' || raw[0] == '[':
		var b bytes.Buffer
		if err := json.Compact(&b, raw); err != nil {
			return out, errMalformed
		}
		text = b.Bytes()
	}
	hs := r.hashes.Get().(*hasher)
	hs.h.Reset()
	hs.h.Write(text)
	sum := hs.h.Sum(hs.sum[:0])
	out = append(out, '"')
	out = hex.AppendEncode(out, sum)
	r.hashes.Put(hs)
	return append(out, '"'), nil
}

// Hash is the text a hashed value takes, without its quotes: for tests
// and for people checking a value by hand.
func (r *Rules) Hash(text []byte) string {
	hs := r.hashes.Get().(*hasher)
	defer r.hashes.Put(hs)
	hs.h.Reset()
	hs.h.Write(text)
	return hex.EncodeToString(hs.h.Sum(nil))
}

// truncateIP returns the JSON string of the IP's network: its /24 for
// IPv4, its /48 for IPv6. nil for a value that is not an IP, which is
// dropped: it cannot be truncated, and kept it might be one.
func truncateIP(raw []byte) []byte {
	if raw[0] != '"' || bytes.IndexByte(raw, '\\') >= 0 {
		return nil
	}
	a, err := netip.ParseAddr(string(raw[1 : len(raw)-1]))
	if err != nil {
		return nil
	}
	bits := 48
	if a.Unmap().Is4() {
		a, bits = a.Unmap(), 24
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return nil
	}
	out := append([]byte{'"'}, p.Addr().String()...)
	return append(out, '"')
}
