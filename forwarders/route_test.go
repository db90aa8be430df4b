package forwarders

import "testing"

func TestRouting(t *testing.T) {
	tests := []struct {
		scenario string
		dest     Destination
		event    string
		want     bool
	}{
		{"an event without integrations goes everywhere", Destination{Name: "ga"}, `{"type":"track"}`, true},
		{"All false keeps it from every destination", Destination{Name: "ga"},
			`{"integrations":{"All":false}}`, false},
		{"All false with the destination named true includes it", Destination{Name: "ga"},
			`{"integrations":{"All":false,"ga":true}}`, true},
		{"a destination named false excludes it", Destination{Name: "ga"},
			`{"integrations":{"ga":false}}`, false},
		{"another destination named false leaves this one", Destination{Name: "ga"},
			`{"integrations":{"mixpanel":false}}`, true},
		{"a destination given options counts as included", Destination{Name: "ga"},
			`{"integrations":{"All":false,"ga":{"clientId":"x"}}}`, true},
		{"include_types keeps the listed types", Destination{Name: "d", IncludeTypes: []string{"track"}},
			`{"type":"track","event":"A"}`, true},
		{"include_types drops other types", Destination{Name: "d", IncludeTypes: []string{"track"}},
			`{"type":"identify"}`, false},
		{"exclude_types drops the listed types", Destination{Name: "d", ExcludeTypes: []string{"page", "screen"}},
			`{"type":"page"}`, false},
		{"include_events keeps the listed event names", Destination{Name: "d", IncludeEvents: []string{"Signed Up"}},
			`{"type":"track","event":"Signed Up"}`, true},
		{"include_events drops events without that name", Destination{Name: "d", IncludeEvents: []string{"Signed Up"}},
			`{"type":"identify"}`, false},
		{"exclude_events drops the listed event names", Destination{Name: "d", ExcludeEvents: []string{"Test"}},
			`{"type":"track","event":"Test"}`, false},
		{"an exclusion in integrations wins over the filters", Destination{Name: "d", IncludeTypes: []string{"track"}},
			`{"type":"track","integrations":{"d":false}}`, false},
		{"an event that does not parse is sent, for the destination to judge", Destination{Name: "d", IncludeTypes: []string{"track"}},
			`{"type":`, true},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			if got := newRouter(tt.dest).wants([]byte(tt.event)); got != tt.want {
				t.Errorf("wants(%s) = %v, want %v", tt.event, got, tt.want)
			}
		})
	}
}

// Segment's types are lower case; someone writing exclude_types=Track
// means track events.
func TestTypeFiltersMatchWhateverCaseTheyAreWrittenIn(t *testing.T) {
	d, err := ParseDestination("d=stdout://?include_types=Track,Page&exclude_types=PAGE", Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	r := newRouter(d)
	for event, want := range map[string]bool{
		`{"type":"track","event":"A"}`: true,
		`{"type":"page"}`:              false,
		`{"type":"identify"}`:          false,
	} {
		if got := r.wants([]byte(event)); got != want {
			t.Errorf("wants(%s) = %v, want %v", event, got, want)
		}
	}
}

func TestMentionsIntegrationsFindsTheKeyAnywhere(t *testing.T) {
	for data, want := range map[string]bool{
		`{"integrations":{"All":false}}`:                          true,
		`{"type":"page","context":{},"integrations":{}}`:          true,
		`{"properties":{"x":{"integrations":1}}}`:                 true, // a false positive costs a parse only
		`"integrations"`:                                          true,
		`{"type":"page","name":"going","category":"integration"}`: false,
		`{"integrations_":1,"g":"integrationsg"}`:                 false,
		`ggggg`: false,
		``:      false,
	} {
		if got := mentionsIntegrations([]byte(data)); got != want {
			t.Errorf("mentionsIntegrations(%s) = %v, want %v", data, got, want)
		}
	}
}
