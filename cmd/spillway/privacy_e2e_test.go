package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
)

// The secrets of privacyEvents: none may be found anywhere once the rules
// that remove them are set.
const (
	secretEmail = "secret-email@example.com"
	secretToken = "secret-token-4711"
	secretIP    = "198.51.100.23"
)

// privacyEvents are n identify events carrying an email, a token and an
// IP, plus one that breaks the spec (dead-lettered at ingest, on disk too).
func privacyEvents(prefix string, n int) []map[string]any {
	var evs []map[string]any
	for i := range n {
		evs = append(evs, map[string]any{
			"type": "identify", "userId": fmt.Sprintf("user-%d", i), "messageId": fmt.Sprintf("%s-%d", prefix, i),
			"traits":     map[string]any{"email": secretEmail, "name": "Ada", "plan": "pro"},
			"properties": map[string]any{"auth_token": secretToken, "page": "home"},
			"context":    map[string]any{"ip": secretIP, "library": map[string]any{"name": "test"}},
		})
	}
	return append(evs, map[string]any{"type": "track", "userId": "u", "messageId": prefix + "-invalid",
		"traits": map[string]any{"email": secretEmail}, "properties": map[string]any{"auth_token": secretToken},
		"context": map[string]any{"ip": secretIP}})
}

func writeKeyFile(t *testing.T, key string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hash.key")
	if err := os.WriteFile(path, []byte("\n  "+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func hmacHex(key, text string) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(text))
	return hex.EncodeToString(m.Sum(nil))
}

func mustNotHoldSecrets(t *testing.T, where string, b []byte) {
	t.Helper()
	for _, s := range []string{secretEmail, secretToken, secretIP} {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("%s holds %q: %.300s", where, s, b)
		}
	}
}

// TestGlobalPrivacyRulesKeepFieldsOffTheDisk: fields dropped by the global
// flags are nowhere: not in the spool's blocks (read back through its
// reader from a destination that never delivered, so that every block is
// still there), nor in the dead letters, the live tail, or any
// destination. A destination's own rules apply to it alone.
func TestGlobalPrivacyRulesKeepFieldsOffTheDisk(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "events.ndjson")
	hook := newSink(t)
	stuck := newSink(t)
	stuck.setStatus(http.StatusServiceUnavailable)
	dir := t.TempDir()
	p := startSpillway(t, "", nil, "--spool-dir", dir, "--flush-interval", "20ms", "--shutdown-timeout", "1s",
		"--drop-field", "traits.email", "--drop-field", "properties.*_token", "--ip", "drop",
		"--hash-key-file", writeKeyFile(t, "k-one"),
		"--destination", "file=file://"+file,
		"--destination", "hook="+hook.URL+"?drop=context.library&hash=traits.name",
		"--destination", "stuck="+stuck.URL+"?backoff_min=1s&backoff_max=2s")

	// Reading the tail turns its recording on.
	tail := func() []byte {
		resp, err := http.Get(p.url() + "/admin/events")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return b
	}
	tail()
	evs := privacyEvents("priv", 20)
	if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", evs); err != nil || code != 200 {
		t.Fatalf("batch: %d %v", code, err)
	}
	testkit.Eventually(t, func() bool {
		u, _ := hook.Counts()
		return len(readNDJSON(t, file)) == 20 && u == 20
	}, "the 20 events at the file and the hook")
	seen := tail()
	if !bytes.Contains(seen, []byte("priv-19")) || !bytes.Contains(seen, []byte("priv-invalid")) {
		t.Fatalf("the tail does not show the events: %.300s", seen)
	}
	mustNotHoldSecrets(t, "the live tail", seen)
	b, _ := os.ReadFile(file)
	mustNotHoldSecrets(t, "the file destination", b)
	dls := listDeadLetters(t, "--addr", p.addr)
	if len(dls) != 1 || dls[0].Reason != spool.ReasonInvalid {
		t.Fatalf("dead letters %+v, want the invalid event", dls)
	}
	mustNotHoldSecrets(t, "the dead letter", dls[0].Event)

	fromFile := readNDJSON(t, file)
	for i := range 20 {
		id := fmt.Sprintf("priv-%d", i)
		f := fromFile[id]
		h, _, _ := hook.Event(id)
		raw, _ := json.Marshal(h)
		mustNotHoldSecrets(t, "the hook", raw)
		fTraits, _ := f["traits"].(map[string]any)
		hTraits, _ := h["traits"].(map[string]any)
		fCtx, _ := f["context"].(map[string]any)
		hCtx, _ := h["context"].(map[string]any)
		if fTraits["name"] != "Ada" || fCtx["library"] == nil || fTraits["plan"] != "pro" {
			t.Errorf("file: %s lost what only the hook drops or hashes: %v", id, f)
		}
		if hTraits["name"] != hmacHex("k-one", "Ada") || hCtx["library"] != nil || hTraits["plan"] != "pro" {
			t.Errorf("hook: %s did not get its own rules: %v", id, h)
		}
	}

	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d after SIGTERM: %s", code, p.stderr)
	}
	// stuck delivered nothing: every block is still in the spool.
	sp, err := spool.Open(spool.Config{Dir: dir, Consumers: []string{"file", "hook", "stuck"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close(context.Background())
	n := 0
	for {
		recs, err := sp.Read("stuck", 1000, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			n++
			mustNotHoldSecrets(t, "the spool's block", r.Data)
			if !bytes.Contains(r.Data, []byte(`"name":"Ada"`)) {
				t.Errorf("the spool's event lost a field no global rule names: %s", r.Data)
			}
		}
	}
	if n != 20 {
		t.Errorf("read %d events back from the spool, want 20", n)
	}
}

// TestHashesAgreeAcrossProcessesWithTheSameKey: two spillways given the
// same key file hash a user alike, as HMAC-SHA256 of the key file's
// trimmed content; one with another key hashes it differently.
func TestHashesAgreeAcrossProcessesWithTheSameKey(t *testing.T) {
	t.Parallel()
	same := writeKeyFile(t, "shared-key")
	other := writeKeyFile(t, "another-key")
	hashed := func(keyFile string) string {
		file := filepath.Join(t.TempDir(), "events.ndjson")
		p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--flush-interval", "20ms",
			"--hash-field", "userId,traits.email", "--hash-key-file", keyFile, "--destination", "file=file://"+file)
		evs := []map[string]any{{"type": "identify", "userId": "user-42", "messageId": "h-1", "traits": map[string]any{"email": secretEmail}}}
		if code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", evs); err != nil || code != 200 {
			t.Fatalf("batch: %d %v", code, err)
		}
		testkit.Eventually(t, func() bool { return len(readNDJSON(t, file)) == 1 }, "the event in the file")
		e := readNDJSON(t, file)["h-1"]
		if traits, _ := e["traits"].(map[string]any); traits["email"] == secretEmail {
			t.Errorf("traits.email arrived unhashed")
		}
		p.stop()
		s, _ := e["userId"].(string)
		return s
	}
	a, b, c := hashed(same), hashed(same), hashed(other)
	if a != b || a != hmacHex("shared-key", "user-42") {
		t.Errorf("the same key hashed user-42 to %q and %q, want %q", a, b, hmacHex("shared-key", "user-42"))
	}
	if c == a || c != hmacHex("another-key", "user-42") {
		t.Errorf("another key hashed user-42 to %q (the first key: %q)", c, a)
	}
}

func TestPrivacyUsageErrors(t *testing.T) {
	key := writeKeyFile(t, "k")
	tests := map[string]struct {
		args []string
		want string
	}{
		"hashing with no key file":               {[]string{"--hash-field", "userId"}, "--hash-field needs --hash-key-file"},
		"a destination hashing with no key file": {[]string{"--destination", "s=stdout://?hash=userId"}, "hash= needs --hash-key-file"},
		"dropping messageId":                     {[]string{"--drop-field", "messageId"}, "messageId cannot be dropped or hashed"},
		"hashing a timestamp":                    {[]string{"--hash-field", "receivedAt", "--hash-key-file", key}, "receivedAt cannot be dropped or hashed"},
		"a pattern that matches type":            {[]string{"--drop-field", "ty*"}, "type cannot be dropped or hashed"},
		"a destination dropping its timestamp":   {[]string{"--destination", "s=stdout://?drop=timestamp"}, "timestamp cannot be dropped or hashed"},
		"an ip mode that does not exist":         {[]string{"--ip", "mask"}, "--ip"},
		"an empty key file":                      {[]string{"--hash-field", "userId", "--hash-key-file", writeKeyFile(t, "")}, "--hash-key-file"},
		"a path with an empty key":               {[]string{"--drop-field", "traits..email"}, "--drop-field"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(t.Context(), append([]string{"run", "--spool-dir", t.TempDir()}, tt.args...), &out, &errOut)
			if code != 2 || !strings.Contains(errOut.String(), tt.want) {
				t.Errorf("exit %d, %q; want 2 and %q", code, errOut.String(), tt.want)
			}
		})
	}
}
