//! From a request to a response: cluster names are answered from the [`Index`]
//! (authoritatively, with the zone's SOA when a name or type has nothing), other names are
//! left to the forwarder, and an `ExternalName` alias to an outside name is answered with
//! the alias followed by what upstream says of its target. Pure: no IO.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::records::{Index, Kind, Lookup, Rec};

/// TTL of cluster answers, in seconds (upstream CoreDNS's default for the cluster zone).
pub const TTL: u32 = 5;

/// What to do with a request.
#[derive(Debug)]
pub enum Outcome {
    /// Send this response.
    Answer(Message),
    /// Not a cluster name: ask upstream.
    Forward,
    /// The cluster alias records (in `response`), then upstream's answer for `target`.
    Alias {
        /// The response so far.
        response: Message,
        /// The outside name the alias points to.
        target: Name,
        /// Made by autopath: when upstream does not know the target, the answer is the
        /// original NXDOMAIN, not a dangling alias.
        autopath: bool,
    },
}

fn name(text: &str) -> Option<Name> {
    let mut name = Name::from_ascii(text).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// A response to `request` with its id, question and flags, and `code`.
pub fn reply(request: &Message, code: ResponseCode) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    response.add_queries(request.queries().iter().cloned());
    response
}

fn soa(domain: &str) -> Option<Record> {
    let zone = name(domain)?;
    let data = SOA::new(
        name(&format!("ns.dns.{domain}"))?,
        name(&format!("hostmaster.{domain}"))?,
        1,
        7200,
        1800,
        86400,
        TTL,
    );
    Some(Record::from_rdata(zone, TTL, RData::SOA(data)))
}

fn record(owner: &Name, rec: &Rec, weight: u16) -> Option<Record> {
    let data = match rec {
        Rec::A(ip) => RData::A(A(*ip)),
        Rec::Cname(target) => RData::CNAME(CNAME(name(target)?)),
        Rec::Srv { port, target } => RData::SRV(SRV::new(0, weight, *port, name(target)?)),
    };
    Some(Record::from_rdata(owner.clone(), TTL, data))
}

/// Where autopath finds a name.
#[derive(Debug, PartialEq, Eq)]
enum Autopath {
    /// Under the cluster domain (`<svc>.<ns>` through `svc.<domain>`).
    Cluster(String),
    /// Outside the cluster: forwarded.
    Outside(String),
}

/// For `<x>.<ns>.svc.<domain>` where `<x>` has a dot (an outside name or `<svc>.<ns>`
/// with the first search domain appended), where the rest of the search path would find it.
fn autopath(index: &Index, name: &str, kind: Kind) -> Option<Autopath> {
    if !matches!(kind, Kind::A | Kind::Aaaa) {
        return None;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain = index.domain();
    let rest = name.strip_suffix(&format!(".svc.{domain}"))?;
    let (x, namespace) = rest.rsplit_once('.')?;
    if namespace.is_empty() || !x.contains('.') || x.ends_with(domain) {
        return None;
    }
    for candidate in [format!("{x}.svc.{domain}"), format!("{x}.{domain}")] {
        if matches!(index.lookup(&candidate, Kind::A), Lookup::Found(ref r) if !r.is_empty()) {
            return Some(Autopath::Cluster(candidate));
        }
    }
    // A name that looks like a cluster one but is not there: no outside lookup for it.
    if x.ends_with(".svc") || x.ends_with(".pod") {
        return None;
    }
    Some(Autopath::Outside(x.to_owned()))
}

/// Decides what `request` gets.
pub fn respond(index: &Index, request: &Message) -> Outcome {
    if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
        return Outcome::Answer(reply(request, ResponseCode::NotImp));
    }
    let Some(query) = request.queries().first() else {
        return Outcome::Answer(reply(request, ResponseCode::FormErr));
    };
    let kind = match query.query_type() {
        RecordType::A => Kind::A,
        RecordType::AAAA => Kind::Aaaa,
        RecordType::SRV => Kind::Srv,
        RecordType::PTR => Kind::Ptr,
        _ => Kind::Other,
    };
    let owner = query.name().clone();
    let text = owner.to_ascii();
    let mut response = reply(request, ResponseCode::NoError);
    response.set_authoritative(true);
    match index.lookup(&text, kind) {
        Lookup::NotOurs => Outcome::Forward,
        Lookup::Missing => {
            // Autopath: a pod's resolver tries an outside name with its search domains
            // first (`ndots:5`), so `example.com.<ns>.svc.<domain>` is asked before
            // `example.com`; answering the first with an alias to where the name really is
            // saves the round trips through the other search domains.
            if let Some(found) = autopath(index, &text, kind) {
                let target = match &found {
                    Autopath::Cluster(name) | Autopath::Outside(name) => name.clone(),
                };
                if let Some(target_name) = name(&target) {
                    response.add_answer(Record::from_rdata(
                        owner,
                        TTL,
                        RData::CNAME(CNAME(target_name.clone())),
                    ));
                    match found {
                        Autopath::Cluster(_) => {
                            if let Lookup::Found(records) = index.lookup(&target, kind) {
                                response.add_answers(
                                    records.iter().filter_map(|r| record(&target_name, r, 100)),
                                );
                            }
                            return Outcome::Answer(response);
                        }
                        Autopath::Outside(_) => {
                            return Outcome::Alias {
                                response,
                                target: target_name,
                                autopath: true,
                            };
                        }
                    }
                }
            }
            response.set_response_code(ResponseCode::NXDomain);
            response.add_name_servers(soa(index.domain()));
            Outcome::Answer(response)
        }
        Lookup::Ptr(target) => {
            if let Some(target) = name(&target) {
                response.add_answer(Record::from_rdata(owner, TTL, RData::PTR(PTR(target))));
            }
            Outcome::Answer(response)
        }
        Lookup::Found(records) if records.is_empty() => {
            response.add_name_servers(soa(index.domain()));
            Outcome::Answer(response)
        }
        Lookup::Found(records) => {
            let weight = u16::try_from(100 / records.len().max(1)).unwrap_or(1);
            response.add_answers(records.iter().filter_map(|r| record(&owner, r, weight)));
            // A SRV answer carries its targets' addresses; an alias inside the cluster its
            // target's records; one outside is resolved upstream.
            for rec in &records {
                match rec {
                    Rec::Srv { target, .. } => {
                        if let (Lookup::Found(more), Some(target_name)) =
                            (index.lookup(target, Kind::A), name(target))
                        {
                            response.add_additionals(
                                more.iter().filter_map(|r| record(&target_name, r, weight)),
                            );
                        }
                    }
                    Rec::Cname(target) => {
                        let Some(target_name) = name(target) else { continue };
                        match index.lookup(target, kind) {
                            Lookup::Found(more) => response.add_answers(
                                more.iter().filter_map(|r| record(&target_name, r, weight)),
                            ),
                            Lookup::NotOurs => {
                                return Outcome::Alias {
                                    response,
                                    target: target_name,
                                    autopath: false,
                                };
                            }
                            _ => &mut response,
                        };
                    }
                    Rec::A(_) => {}
                }
            }
            Outcome::Answer(response)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hickory_proto::op::Query;

    use super::*;

    fn request(text: &str, kind: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(7).set_recursion_desired(true);
        m.add_query(Query::query(name(text).expect("name"), kind));
        m
    }

    fn index() -> Index {
        let svc = |n: &str, spec: serde_json::Value| {
            Arc::new(
                serde_json::from_value(
                    serde_json::json!({"metadata": {"name": n, "namespace": "ns"}, "spec": spec}),
                )
                .expect("service"),
            )
        };
        Index::build(
            "cluster.local",
            &[
                svc(
                    "web",
                    serde_json::json!({"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80}]}),
                ),
                svc(
                    "out",
                    serde_json::json!({"type": "ExternalName", "externalName": "example.com"}),
                ),
            ],
            &[],
        )
    }

    #[test]
    fn cluster_names_are_answered_with_the_request_id_and_others_forwarded() {
        let index = index();
        let Outcome::Answer(m) =
            respond(&index, &request("web.ns.svc.cluster.local", RecordType::A))
        else {
            panic!("answered")
        };
        assert_eq!(
            (m.id(), m.response_code(), m.authoritative()),
            (7, ResponseCode::NoError, true)
        );
        assert_eq!(m.answers().len(), 1);
        let Outcome::Answer(m) =
            respond(&index, &request("nope.ns.svc.cluster.local", RecordType::A))
        else {
            panic!("answered")
        };
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert_eq!(m.name_servers().len(), 1, "with the zone's SOA");
        assert!(matches!(
            respond(&index, &request("example.org", RecordType::A)),
            Outcome::Forward
        ));
        let Outcome::Answer(m) =
            respond(&index, &request("_http._tcp.web.ns.svc.cluster.local", RecordType::SRV))
        else {
            panic!("answered")
        };
        assert_eq!((m.answers().len(), m.additionals().len()), (1, 1));
    }

    #[test]
    fn autopath_answers_the_first_search_query_with_where_the_name_is() {
        let index = index();
        // `web.ns` asked from a pod: its resolver first sends `web.ns.<ns>.svc…`.
        let Outcome::Answer(m) =
            respond(&index, &request("web.ns.default.svc.cluster.local", RecordType::A))
        else {
            panic!("answered")
        };
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(m.answers().len(), 2, "the alias, then the Service's address");
        // An outside name goes upstream under an alias.
        match respond(&index, &request("example.org.default.svc.cluster.local", RecordType::A)) {
            Outcome::Alias { target, autopath, .. } => {
                assert_eq!((target.to_ascii().as_str(), autopath), ("example.org.", true));
            }
            other => panic!("{other:?}"),
        }
        // A plain missing Service is still NXDOMAIN.
        let Outcome::Answer(m) =
            respond(&index, &request("nope.default.svc.cluster.local", RecordType::A))
        else {
            panic!("answered")
        };
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
    }

    #[test]
    fn an_external_name_is_an_alias_resolved_upstream() {
        match respond(&index(), &request("out.ns.svc.cluster.local", RecordType::A)) {
            Outcome::Alias { response, target, .. } => {
                assert_eq!(target.to_ascii(), "example.com.");
                assert_eq!(response.answers().len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }
}
