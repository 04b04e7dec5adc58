//! The agent's own networking: the node-local interface that carries the proxy's addresses,
//! the proxy's listening sockets, client network namespaces, upstream connections dialled
//! from them (exempt from the redirect), and following database host names in DNS.

pub mod dns;
pub mod listener;
pub mod netif;
pub mod netns;
pub mod upstream;
