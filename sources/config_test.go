package sources

import (
	"strings"
	"testing"
	"time"
)

func TestParseSource(t *testing.T) {
	t.Setenv("SPILLWAY_KAFKA_PASSWORD", "")
	ok := map[string]func(Source) bool{
		"kafka://h1,h2:9093/events?group=relays": func(s Source) bool {
			o := s.Kafka
			return s.Name == "events" && s.Kind == KindKafka && o.Topic == "events" && o.Group == "relays" &&
				strings.Join(o.Brokers, ",") == "h1:9092,h2:9093" && o.SessionTimeout == DefaultSessionTimeout
		},
		"eu=kafka://h/events.v1?group=g&session_timeout=10s&tls=true": func(s Source) bool {
			return s.Name == "eu" && s.Kafka.Topic == "events.v1" && s.Kafka.SessionTimeout == 10*time.Second && s.Kafka.TLS
		},
		"kafka://h/events?group=g&sasl=scram-sha-512&user=u&password=hunter2": func(s Source) bool {
			return s.Kafka.SASL == "scram-sha-512" && s.Kafka.User == "u" && s.Kafka.Password == "hunter2"
		},
	}
	for spec, check := range ok {
		s, err := ParseSource(spec)
		if err != nil || !check(s) {
			t.Errorf("ParseSource(%q) = %+v, %v", spec, s, err)
		}
	}
	bad := map[string]string{
		"a source without a group":            "kafka://h/events",
		"a source of another kind":            "x=https://example.com/hook",
		"a source with an unknown parameter":  "kafka://h/events?group=g&batch_events=10",
		"a source with a bad topic":           "kafka://h/bad%20topic?group=g",
		"a source with no broker":             "kafka:///events?group=g",
		"a name that is not a name":           "Big Name=kafka://h/events?group=g",
		"SASL without a password anywhere":    "kafka://h/events?group=g&sasl=plain&user=u",
		"a session timeout out of range":      "kafka://h/events?group=g&session_timeout=2h",
		"a group given twice":                 "kafka://h/events?group=g&group=h",
		"credentials in the URL, not as user": "kafka://u:secret@h/events?group=g",
	}
	for name, spec := range bad {
		if _, err := ParseSource(spec); err == nil {
			t.Errorf("%s: ParseSource(%q) took it", name, spec)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the error echoes the password: %v", name, err)
		}
	}
	if _, err := ParseSources([]string{"kafka://h/events?group=a", "kafka://h2/events?group=b"}); err == nil ||
		!strings.Contains(err.Error(), "name used twice") {
		t.Errorf("two sources named events: %v, want an error asking for names", err)
	}
}
