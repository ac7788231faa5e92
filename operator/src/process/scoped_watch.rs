//! Watches over a [`WatchScope`]: one watcher for every namespace or for a single one, and for
//! several namespaces one watcher each, merged into one stream that a single reflector store can
//! take (see [`union_of_watches`]).

use std::collections::BTreeMap;
use std::fmt::Debug;

use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::Store;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::watch_backoff::WatchBackoff;

/// Where the controller watches SandboxServices and their children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WatchScope {
    /// Every namespace: the shipped install, with a ClusterRole.
    #[default]
    AllNamespaces,
    /// These namespaces only (`--namespace`, repeatable), for an install granted a Role in each
    /// and no cluster-wide write. Sorted, without duplicates, never empty.
    Namespaces(Vec<String>),
}

impl WatchScope {
    /// The scope of `namespaces`: every namespace when there are none.
    pub fn of(namespaces: &[String]) -> Self {
        let mut namespaces = namespaces.to_vec();
        namespaces.sort();
        namespaces.dedup();
        if namespaces.is_empty() {
            Self::AllNamespaces
        } else {
            Self::Namespaces(namespaces)
        }
    }

    /// The APIs of `K` that cover this scope: one for all namespaces, or one per namespace.
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Self::AllNamespaces => vec![Api::all(client.clone())],
            Self::Namespaces(namespaces) => namespaces
                .iter()
                .map(|namespace| Api::namespaced(client.clone(), namespace))
                .collect(),
        }
    }
}

/// The watch events of a scoped watch.
pub type WatchEvents<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// Watch `K` over `scope` with `config`, each watcher backing off on its own and `trim`ming its
/// objects; `store` is the reflector store the events will fill (a merged relist reads from it
/// the namespaces that did not relist).
pub fn scoped_watcher<K>(
    scope: &WatchScope,
    client: &Client,
    config: &watcher::Config,
    trim: fn(&mut K),
    store: &Store<K>,
) -> WatchEvents<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let mut watches: Vec<_> = scope
        .apis::<K>(client)
        .into_iter()
        .map(|api| {
            watcher::watcher(api, config.clone())
                .backoff(WatchBackoff::new())
                .modify(trim)
                .boxed()
        })
        .collect();
    match scope {
        WatchScope::AllNamespaces => watches.remove(0),
        WatchScope::Namespaces(namespaces) if namespaces.len() == 1 => watches.remove(0),
        WatchScope::Namespaces(namespaces) => {
            union_of_watches(namespaces.clone(), watches, store.clone()).boxed()
        }
    }
}

/// One stream of watch events for a store, from one watch per namespace (`watches[i]` watches
/// `namespaces[i]`).
///
/// A reflector store takes a relist (`Init` … `InitDone`) as the whole of its contents, so one
/// namespace's relist passed on as it is would empty the store of every other namespace. Here
/// each namespace's relist is buffered, and passed on as a relist of the union: the first once
/// every namespace has listed (so the store is ready only with all of them), later ones with the
/// other namespaces' objects as `store` holds them. Changes between relists pass through.
pub fn union_of_watches<K>(
    namespaces: Vec<String>,
    watches: Vec<WatchEvents<K>>,
    store: Store<K>,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let mut union = Union {
        namespaces,
        relisting: watches.iter().map(|_| None).collect(),
        first_lists: watches.iter().map(|_| None).collect(),
        listed: false,
        store,
    };
    let tagged = watches
        .into_iter()
        .enumerate()
        .map(|(index, events)| events.map(move |event| (index, event)));
    stream::select_all(tagged).flat_map(move |(index, event)| {
        let out = match event {
            Ok(event) => union.on(index, event).into_iter().map(Ok).collect(),
            Err(error) => vec![Err(error)],
        };
        stream::iter(out)
    })
}

/// Objects of one namespace by name.
type Listed<K> = BTreeMap<String, K>;

/// The state of [`union_of_watches`].
struct Union<K: Resource<DynamicType = ()> + Clone + 'static> {
    namespaces: Vec<String>,
    /// A namespace's relist under way.
    relisting: Vec<Option<Listed<K>>>,
    /// Before every namespace has listed once: the lists done, kept up to date by later changes.
    first_lists: Vec<Option<Listed<K>>>,
    /// Whether every namespace has listed once (and the union's first relist went out).
    listed: bool,
    store: Store<K>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Union<K> {
    /// The events for the store after `event` of namespace `index`.
    fn on(&mut self, index: usize, event: Event<K>) -> Vec<Event<K>> {
        match event {
            Event::Init => {
                self.relisting[index] = Some(Listed::new());
                vec![]
            }
            Event::InitApply(object) => {
                if let Some(relisting) = &mut self.relisting[index] {
                    relisting.insert(object.name_any(), object);
                }
                vec![]
            }
            Event::InitDone => {
                let list = self.relisting[index].take().unwrap_or_default();
                if self.listed {
                    self.relist(index, list)
                } else {
                    self.first_lists[index] = Some(list);
                    self.first_relist()
                }
            }
            // Before the union's first relist, a change goes into the list it will carry (a
            // watcher reports changes only after its own list).
            Event::Apply(object) if !self.listed => {
                if let Some(list) = &mut self.first_lists[index] {
                    list.insert(object.name_any(), object);
                }
                vec![]
            }
            Event::Delete(object) if !self.listed => {
                if let Some(list) = &mut self.first_lists[index] {
                    list.remove(&object.name_any());
                }
                vec![]
            }
            change @ (Event::Apply(_) | Event::Delete(_)) => vec![change],
        }
    }

    /// The union's first relist, once every namespace has listed.
    fn first_relist(&mut self) -> Vec<Event<K>> {
        if self.first_lists.iter().any(Option::is_none) {
            return vec![];
        }
        self.listed = true;
        let objects = self.first_lists.iter_mut().flat_map(|list| {
            list.take()
                .unwrap_or_default()
                .into_values()
                .map(Event::InitApply)
        });
        std::iter::once(Event::Init)
            .chain(objects)
            .chain(std::iter::once(Event::InitDone))
            .collect()
    }

    /// A relist of the union for namespace `index`'s new `list`: the other namespaces as the
    /// store has them.
    fn relist(&self, index: usize, list: Listed<K>) -> Vec<Event<K>> {
        let namespace = &self.namespaces[index];
        let others = self
            .store
            .state()
            .into_iter()
            .filter(|object| object.namespace().as_ref() != Some(namespace))
            .map(|object| Event::InitApply(K::clone(&object)));
        std::iter::once(Event::Init)
            .chain(others)
            .chain(list.into_values().map(Event::InitApply))
            .chain(std::iter::once(Event::InitDone))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector::{self, store::Writer};

    fn object(namespace: &str, name: &str) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.namespace = Some(namespace.into());
        object.metadata.name = Some(name.into());
        object
    }

    /// A union of namespaces `a` and `b` feeding a store, driven one event at a time.
    struct Fixture {
        union: Union<ConfigMap>,
        writer: Writer<ConfigMap>,
        store: Store<ConfigMap>,
    }

    impl Fixture {
        fn new() -> Self {
            let (store, writer) = reflector::store();
            let union = Union {
                namespaces: vec!["a".into(), "b".into()],
                relisting: vec![None, None],
                first_lists: vec![None, None],
                listed: false,
                store: store.clone(),
            };
            Self {
                union,
                writer,
                store,
            }
        }

        /// Namespace `index`'s `event`; what went to the store, as `ns/name` or the event's kind.
        fn on(&mut self, index: usize, event: Event<ConfigMap>) -> Vec<String> {
            let out = self.union.on(index, event);
            for event in &out {
                self.writer.apply_watcher_event(event);
            }
            out.iter()
                .map(|event| match event {
                    Event::Init => "Init".into(),
                    Event::InitDone => "InitDone".into(),
                    Event::InitApply(o) | Event::Apply(o) | Event::Delete(o) => {
                        format!("{}/{}", o.namespace().unwrap(), o.name_any())
                    }
                })
                .collect()
        }

        fn list(&mut self, index: usize, names: &[&str]) -> Vec<String> {
            let namespace = self.union.namespaces[index].clone();
            let mut out = self.on(index, Event::Init);
            for name in names {
                out.extend(self.on(index, Event::InitApply(object(&namespace, name))));
            }
            out.extend(self.on(index, Event::InitDone));
            out
        }

        fn ready(&self) -> bool {
            use futures::FutureExt;
            self.store.wait_until_ready().now_or_never().is_some()
        }

        fn contents(&self) -> Vec<String> {
            let mut names: Vec<String> = self
                .store
                .state()
                .iter()
                .map(|o| format!("{}/{}", o.namespace().unwrap(), o.name_any()))
                .collect();
            names.sort();
            names
        }
    }

    #[test]
    fn the_store_is_ready_only_once_every_namespace_has_listed() {
        let mut fixture = Fixture::new();
        assert!(fixture.list(0, &["x"]).is_empty());
        // A change in a listed namespace before the others have: held for the first relist.
        assert!(fixture.on(0, Event::Apply(object("a", "y"))).is_empty());
        assert!(fixture.on(0, Event::Delete(object("a", "x"))).is_empty());
        assert!(!fixture.ready());
        assert_eq!(fixture.list(1, &["z"]), ["Init", "a/y", "b/z", "InitDone"]);
        assert!(fixture.ready());
        assert_eq!(fixture.contents(), ["a/y", "b/z"]);
    }

    #[test]
    fn one_namespaces_relist_replaces_its_objects_and_keeps_the_others() {
        let mut fixture = Fixture::new();
        fixture.list(0, &["x", "y"]);
        fixture.list(1, &["z"]);
        // Changes pass through once listed.
        assert_eq!(fixture.on(1, Event::Apply(object("b", "w"))), ["b/w"]);
        assert_eq!(fixture.contents(), ["a/x", "a/y", "b/w", "b/z"]);
        // `a` relists (its watch expired) and `y` went meanwhile: `b` is untouched.
        fixture.list(0, &["x"]);
        assert_eq!(fixture.contents(), ["a/x", "b/w", "b/z"]);
        assert_eq!(fixture.on(1, Event::Delete(object("b", "z"))), ["b/z"]);
        assert_eq!(fixture.contents(), ["a/x", "b/w"]);
    }

    #[test]
    fn a_scope_of_no_namespace_is_all_and_namespaces_are_sorted_once() {
        assert_eq!(WatchScope::of(&[]), WatchScope::AllNamespaces);
        let names = ["b".to_string(), "a".into(), "b".into()];
        assert_eq!(
            WatchScope::of(&names),
            WatchScope::Namespaces(vec!["a".into(), "b".into()])
        );
    }
}
