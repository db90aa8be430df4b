package proxy

import (
	"net/http"
	"strings"
	"testing"
)

// TestGlobalPrivacyRulesApplyBeforeAnythingIsKept: the events stored, the
// invalid and the too large ones dead-lettered all come without what
// --drop-field and --ip remove, on the fast path and the tree parser's.
func TestGlobalPrivacyRulesApplyBeforeAnythingIsKept(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxEventBytes = 300
	cfg.DropFields = []string{"traits.email,properties.*_token"}
	cfg.IP = "truncate"
	ev := `{"type":"identify","userId":"u","traits":{"email":"e@x.io","n":1},"properties":{"a_token":"T0K"},"context":{"ip":"192.0.2.77"}}`
	invalid := `{"type":"identify","traits":{"email":"e@x.io"},"context":{"ip":"192.0.2.77"}}`
	big := `{"type":"identify","userId":"u","traits":{"email":"e@x.io","pad":"` + strings.Repeat("p", 400) + `"},"context":{"ip":"192.0.2.77"}}`
	for name, body := range map[string]string{
		"fast path":   `{"batch":[` + ev + `,` + invalid + `,` + big + `]}`,
		"tree parser": `{"batch":[ ` + ev + `,` + invalid + `,` + big + `],"context":{"x":1}}`,
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, cfg)
			a := h.post(t, "/v1/batch", body)
			if a.status != http.StatusOK {
				t.Fatalf("answer %d %s", a.status, a.body)
			}
			c := h.sp.onlyCall(t)
			if len(c.events) != 1 || len(c.dead) != 2 {
				t.Fatalf("%d events, %d dead letters", len(c.events), len(c.dead))
			}
			kept := [][]byte{c.events[0].Data, c.dead[0].Event, c.dead[1].Event}
			for _, b := range kept {
				if s := string(b); strings.Contains(s, "e@x.io") || strings.Contains(s, "T0K") || strings.Contains(s, "192.0.2.77") {
					t.Errorf("kept %s", s)
				}
			}
			if !strings.Contains(string(c.events[0].Data), `"ip":"192.0.2.0"`) || !strings.Contains(string(c.events[0].Data), `"n":1`) {
				t.Errorf("stored %s", c.events[0].Data)
			}
		})
	}
}

func TestPrivacyFlagsAreChecked(t *testing.T) {
	for name, tt := range map[string]struct {
		cfg  func(*Config)
		want string
	}{
		"a hash without a key file":  {func(c *Config) { c.HashFields = []string{"userId"} }, "--hash-field needs --hash-key-file"},
		"dropping messageId":         {func(c *Config) { c.DropFields = []string{"messageId"} }, "--drop-field: path \"messageId\""},
		"an ip mode that is not one": {func(c *Config) { c.IP = "hide" }, "--ip: want keep, truncate or drop"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.cfg(&cfg)
			if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}
