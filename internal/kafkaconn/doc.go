// Package kafkaconn is how spillway reaches a Kafka cluster, shared by the
// Kafka destination (forwarders) and the Kafka source (sources/kafka): the
// kafka://host:9092,host2:9092/topic URL's brokers and topic, the TLS and
// SASL parameters (tls, sasl, user, password, password_env), and the
// franz-go options they make.
//
// It imports nothing of spillway's, so that either side may import it
// without bending the dependencies (cmd -> proxy, forwarders, sources ->
// spool).
package kafkaconn
