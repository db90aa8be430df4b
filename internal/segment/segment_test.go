package segment

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	ids := Has{UserID: true, AnonymousID: true, PreviousID: true, GroupID: true, Event: true}
	anonymous := ids
	anonymous.UserID = false
	tests := []struct {
		scenario string
		typ      string
		has      Has
		want     Rule
	}{
		{"an identify with a userId keeps the rules", Identify, Has{UserID: true}, RuleOK},
		{"a page with only an anonymousId keeps the rules", Page, Has{AnonymousID: true}, RuleOK},
		{"a screen with neither id breaks them", Screen, Has{Event: true}, RuleMissingIdentity},
		{"a track needs an id before an event", Track, Has{}, RuleMissingIdentity},
		{"a track needs an event", Track, Has{AnonymousID: true}, RuleTrackEvent},
		{"a track with both keeps the rules", Track, Has{UserID: true, Event: true}, RuleOK},
		{"a group needs a groupId", Group, Has{UserID: true}, RuleGroupID},
		{"a group with both keeps the rules", Group, Has{AnonymousID: true, GroupID: true}, RuleOK},
		{"an alias needs a userId, an anonymousId will not do", Alias, anonymous, RuleAliasUserID},
		{"an alias needs a previousId", Alias, Has{UserID: true}, RuleAliasPreviousID},
		{"an alias with both keeps the rules", Alias, Has{UserID: true, PreviousID: true}, RuleOK},
		{"a type in capitals is not a type", "Track", ids, RuleUnknownType},
		{"an empty type is not a type", "", ids, RuleUnknownType},
		{"batch is an endpoint, not a type", Batch, ids, RuleUnknownType},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			if got := Check(tt.typ, tt.has); got != tt.want {
				t.Errorf("Check(%q, %+v) = %q, want %q", tt.typ, tt.has, got.Code(), tt.want.Code())
			}
		})
	}
}

func TestRulesAreNamed(t *testing.T) {
	if RuleOK.Code() != "" || RuleOK.String() != "" {
		t.Errorf("RuleOK is named %q, %q", RuleOK.Code(), RuleOK.String())
	}
	seen := map[string]bool{}
	for r := RuleOK + 1; r < NumRules; r++ {
		if r.Code() == "" || r.String() == "" || seen[r.Code()] {
			t.Errorf("rule %d: code %q (repeated: %v), text %q", r, r.Code(), seen[r.Code()], r.String())
		}
		seen[r.Code()] = true
	}
	if want := "type is not one of track, identify, page, screen, group, alias"; RuleUnknownType.String() != want {
		t.Errorf("RuleUnknownType says %q, want %q", RuleUnknownType.String(), want)
	}
}

func TestEndpoints(t *testing.T) {
	eps := Endpoints()
	var names []string
	for _, e := range eps {
		names = append(names, e.Name)
		if e.Path != "/v1/"+e.Name {
			t.Errorf("%s is at %s", e.Name, e.Path)
		}
		if e.Short != "" && e.Short != "/v1/"+e.Name[:1] {
			t.Errorf("%s's short path is %s", e.Name, e.Short)
		}
	}
	if want := append(Types(), Batch, Import); !slices.Equal(names, want) {
		t.Errorf("endpoints %v, want %v", names, want)
	}
	for _, typ := range Types() {
		if !IsType(typ) {
			t.Errorf("IsType(%q) = false", typ)
		}
	}
	for _, s := range []string{Batch, Import, "Track", "", "tracks"} {
		if IsType(s) {
			t.Errorf("IsType(%q) = true", s)
		}
	}
}

func TestAppendTimeIsTimeLayout(t *testing.T) {
	times := []time.Time{
		time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 6, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2024, 2, 29, 23, 59, 59, 1_500_000, time.FixedZone("x", -7*3600)),
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		times = append(times, time.Unix(r.Int64N(400_000_000_000)-200_000_000_000, r.Int64N(1e9)))
	}
	for _, tm := range times {
		if got, want := string(AppendTime(nil, tm)), tm.UTC().Format(TimeLayout); got != want {
			t.Fatalf("AppendTime(%v) = %s, want %s", tm, got, want)
		}
	}
}

func TestParseTime(t *testing.T) {
	tests := []struct {
		scenario string
		in       string
		want     time.Time
		ok       bool
	}{
		{"UTC with milliseconds, as spillway writes", "2024-05-01T11:59:58.123Z",
			time.Date(2024, 5, 1, 11, 59, 58, 123e6, time.UTC), true},
		{"an offset, as analytics-node writes local time", "2024-05-01T13:59:58+02:00",
			time.Date(2024, 5, 1, 11, 59, 58, 0, time.UTC), true},
		{"no zone, as analytics-python writes a naive datetime: UTC", "2024-05-01T11:59:58.123456",
			time.Date(2024, 5, 1, 11, 59, 58, 123456e3, time.UTC), true},
		{"a date alone is not a time", "2024-05-01", time.Time{}, false},
		{"a unix time is not ISO 8601", "1714564798", time.Time{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			got, ok := ParseTime(tt.in)
			if ok != tt.ok || !got.Equal(tt.want) {
				t.Errorf("ParseTime(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}
