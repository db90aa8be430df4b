package privacy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func mustPaths(t testing.TB, list string) []Path {
	t.Helper()
	if list == "" {
		return nil
	}
	p, err := ParsePaths(list)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func hmacHex(key, text string) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(text))
	return hex.EncodeToString(m.Sum(nil))
}

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, key string
		want         bool
	}{
		{"email", "email", true},
		{"email", "emails", false},
		{"*", "", true},
		{"*", "anything", true},
		{"*_token", "auth_token", true},
		{"*_token", "_token", true},
		{"*_token", "auth_token_2", false},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "abcbc", true},
		{"a*b*c", "acb", false},
		{"**", "x", true},
		{"é*", "école", true},
		{"*é", "café", true},
		{"*é", "cafe", false},
	}
	for _, tt := range tests {
		if got := Match(tt.pattern, tt.key); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.key, got, tt.want)
		}
	}
}

func TestParsePathsRefusesWhatDestinationsRelyOn(t *testing.T) {
	for _, list := range []string{"messageId", "type", "timestamp", "originalTimestamp", "receivedAt", "sentAt", "traits.email,*Id", "*", "", "a..b", "a,"} {
		if _, err := ParsePaths(list); err == nil {
			t.Errorf("ParsePaths(%q) took it", list)
		}
	}
	for _, list := range []string{"context.messageId", "userId,traits.email", "properties.*_token", "context.*"} {
		if _, err := ParsePaths(list); err != nil {
			t.Errorf("ParsePaths(%q): %v", list, err)
		}
	}
}

func TestApply(t *testing.T) {
	const key = "k3y"
	event := `{"type":"identify","userId":"u-1","traits":{"email":"a@b.c","age":31,"address":{"city":"X"},"name":"N"},` +
		`"properties":{"auth_token":"t1","csrf_token":"t2","token":"keep","nested":{"x_token":"deeper"}},` +
		`"context":{"ip":"203.0.113.77","library":{"name":"n"}},"list":[{"email":"in-array"}],"messageId":"m1"}`
	tests := []struct {
		scenario   string
		drop, hash string
		ip         IPMode
		want       string
	}{
		{scenario: "dropping removes the field and only it",
			drop: "traits.email,context.ip",
			want: `{"type":"identify","userId":"u-1","traits":{"age":31,"address":{"city":"X"},"name":"N"},` +
				`"properties":{"auth_token":"t1","csrf_token":"t2","token":"keep","nested":{"x_token":"deeper"}},` +
				`"context":{"library":{"name":"n"}},"list":[{"email":"in-array"}],"messageId":"m1"}`},
		{scenario: "a star matches any key at its level only",
			drop: "properties.*_token",
			want: `{"type":"identify","userId":"u-1","traits":{"email":"a@b.c","age":31,"address":{"city":"X"},"name":"N"},` +
				`"properties":{"token":"keep","nested":{"x_token":"deeper"}},` +
				`"context":{"ip":"203.0.113.77","library":{"name":"n"}},"list":[{"email":"in-array"}],"messageId":"m1"}`},
		{scenario: "hashing replaces a string by the HMAC of its text and any other value by that of its JSON",
			hash: "userId,traits.age,traits.address",
			want: `{"type":"identify","userId":"` + hmacHex(key, "u-1") + `","traits":{"email":"a@b.c","age":"` + hmacHex(key, "31") +
				`","address":"` + hmacHex(key, `{"city":"X"}`) + `","name":"N"},` +
				`"properties":{"auth_token":"t1","csrf_token":"t2","token":"keep","nested":{"x_token":"deeper"}},` +
				`"context":{"ip":"203.0.113.77","library":{"name":"n"}},"list":[{"email":"in-array"}],"messageId":"m1"}`},
		{scenario: "dropping wins over hashing, and a missing path changes nothing",
			drop: "traits.email,nothing.here", hash: "traits.email,traits.*",
			want: `{"type":"identify","userId":"u-1","traits":{"age":"` + hmacHex(key, "31") + `","address":"` + hmacHex(key, `{"city":"X"}`) +
				`","name":"` + hmacHex(key, "N") + `"},` +
				`"properties":{"auth_token":"t1","csrf_token":"t2","token":"keep","nested":{"x_token":"deeper"}},` +
				`"context":{"ip":"203.0.113.77","library":{"name":"n"}},"list":[{"email":"in-array"}],"messageId":"m1"}`},
		{scenario: "ip=truncate keeps an IPv4 address's /24", ip: IPTruncate,
			want: strings.Replace(event, "203.0.113.77", "203.0.113.0", 1)},
		{scenario: "ip=drop removes it", ip: IPDrop,
			want: strings.Replace(event, `"ip":"203.0.113.77",`, "", 1)},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			r, err := New(mustPaths(t, tt.drop), mustPaths(t, tt.hash), tt.ip, []byte(key))
			if err != nil {
				t.Fatal(err)
			}
			got, err := r.Apply([]byte("prefix:"), []byte(event))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != "prefix:"+tt.want {
				t.Errorf("got  %s\nwant prefix:%s", got, tt.want)
			}
		})
	}
}

func TestTruncateIP(t *testing.T) {
	r, err := New(nil, nil, IPTruncate, nil)
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		`"10.1.2.3"`:                 `{"context":{"ip":"10.1.2.0"}}`,
		`"2001:db8:abcd:12::1"`:      `{"context":{"ip":"2001:db8:abcd::"}}`,
		`"::ffff:192.0.2.9"`:         `{"context":{"ip":"192.0.2.0"}}`,
		`"not an ip"`:                `{"context":{}}`,
		`42`:                         `{"context":{}}`,
		`"10.1.2.3\u0000"`:           `{"context":{}}`,
		`{"v4":"10.1.2.3"}`:          `{"context":{}}`,
		`"fe80::1%eth0"`:             `{"context":{"ip":"fe80::"}}`,
		`"2001:db8:abcd:ffff::ffff"`: `{"context":{"ip":"2001:db8:abcd::"}}`,
	} {
		got, err := r.Apply(nil, []byte(`{"context":{"ip":`+in+`}}`))
		if err != nil || string(got) != want {
			t.Errorf("ip %s: %s, %v; want %s", in, got, err, want)
		}
	}
}

func TestHashingNeedsAKey(t *testing.T) {
	if _, err := New(nil, mustPaths(t, "userId"), IPKeep, nil); err != ErrNoKey {
		t.Errorf("New without a key: %v, want ErrNoKey", err)
	}
	if r, err := New(nil, nil, IPKeep, nil); r != nil || err != nil {
		t.Errorf("New of no rules = %v, %v; want nil, nil", r, err)
	}
}

func TestApplyKeepsWhatIsNotAnObject(t *testing.T) {
	r, _ := New(mustPaths(t, "a"), nil, IPKeep, nil)
	for _, in := range []string{`"text"`, `[1,{"a":1}]`, `12`, ``} {
		if got, err := r.Apply(nil, []byte(in)); err != nil || string(got) != in {
			t.Errorf("Apply(%s) = %s, %v", in, got, err)
		}
	}
	for _, in := range []string{`{"a":1`, `{"a" 1}`, `{"a":1}x`, `{"b":}`, `{"b":"x}`} {
		if got, err := r.Apply([]byte("p"), []byte(in)); err == nil || string(got) != "p" {
			t.Errorf("Apply(%s) = %s, %v; want an error and dst as it was", in, got, err)
		}
	}
}

func TestEscapedKeysAndValues(t *testing.T) {
	r, _ := New(mustPaths(t, "traits.email"), mustPaths(t, "userId"), IPKeep, []byte("k"))
	got, err := r.Apply(nil, []byte(`{"user\u0049d":"caf\u00e9","traits":{"e\u006dail":"x","keep":"y"}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"user\u0049d":"` + hmacHex("k", "café") + `","traits":{"keep":"y"}}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	var v any
	if err := json.Unmarshal(got, &v); err != nil || !reflect.DeepEqual(v.(map[string]any)["traits"], map[string]any{"keep": "y"}) {
		t.Errorf("%s: %v", got, err)
	}
}
