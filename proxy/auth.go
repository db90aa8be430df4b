package proxy

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"sync/atomic"
)

// keyring checks write keys. Keys are compared as SHA-256 digests so that
// every comparison takes the same time whatever the candidate's length, and
// every configured key is compared, so the time does not say which matched.
type keyring struct {
	keys   []string
	hashes [][sha256.Size]byte
	// last interns the most recent key when any key is accepted, so a
	// steady stream of requests under one key allocates no strings.
	last atomic.Pointer[string]
}

func newKeyring(keys []string) *keyring {
	k := &keyring{keys: keys}
	for _, key := range keys {
		k.hashes = append(k.hashes, sha256.Sum256([]byte(key)))
	}
	return k
}

// resolve returns the key as a string safe to keep past the request, and
// whether it is accepted.
func (k *keyring) resolve(b []byte) (string, bool) {
	if len(k.keys) == 0 {
		if len(b) == 0 {
			return "", true
		}
		if p := k.last.Load(); p != nil && *p == string(b) {
			return *p, true
		}
		s := string(b)
		k.last.Store(&s)
		return s, true
	}
	if len(b) == 0 {
		return "", false
	}
	h := sha256.Sum256(b)
	match := -1
	for i := range k.hashes {
		eq := subtle.ConstantTimeCompare(h[:], k.hashes[i][:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return "", false
	}
	return k.keys[match], true
}

// basicUser returns the user name of an "Authorization: Basic" header, which
// is where the Segment SDKs put the write key, decoded into buf when it
// fits. It returns nil for any other or malformed header.
func basicUser(h, buf []byte) []byte {
	const prefix = "basic "
	if len(h) < len(prefix) || !bytes.EqualFold(h[:len(prefix)], []byte(prefix)) {
		return nil
	}
	enc := bytes.TrimSpace(h[len(prefix):])
	if n := base64.StdEncoding.DecodedLen(len(enc)); n > len(buf) {
		buf = make([]byte, n)
	}
	n, err := base64.StdEncoding.Decode(buf, enc)
	if err != nil {
		return nil
	}
	user := buf[:n]
	if i := bytes.IndexByte(user, ':'); i >= 0 {
		user = user[:i]
	}
	return user
}

// bearerMatches reports whether h is "Bearer <token>", in constant time.
func bearerMatches(h []byte, token string) bool {
	const prefix = "bearer "
	if token == "" || len(h) < len(prefix) || !bytes.EqualFold(h[:len(prefix)], []byte(prefix)) {
		return false
	}
	got := sha256.Sum256(bytes.TrimSpace(h[len(prefix):]))
	want := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}
