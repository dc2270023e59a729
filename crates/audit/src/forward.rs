//! Forwarding to a syslog collector over mutual TLS (RFC 5424 over RFC 5425).
