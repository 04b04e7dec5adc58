//! The agent's own networking: the node-local interface that carries the proxy's addresses,
//! the proxy's listening sockets, client network namespaces, upstream connections dialled
//! from them (exempt from the redirect), following database host names in DNS, and the one owner
//! of the kernel's governed-endpoint table those followers write to.

pub mod dns;
pub mod governed;
pub mod listener;
pub mod netif;
pub mod netns;
pub mod upstream;
