import WeftCore

/// Opens a datastore from a URL: `sqlite:///path/to/weft.db` (the embedded default, one file
/// shared by the processes of one machine) or `etcd://host:port[,host:port...]`.
public func openDatastore(_ url: String) throws -> any Datastore {
    if url.hasPrefix("sqlite://") {
        let path = String(url.dropFirst("sqlite://".count))
        guard path.hasPrefix("/") else { throw DatastoreError.unavailable("\(url): the SQLite path must be absolute, e.g. sqlite:///var/lib/weft/weft.db") }
        return try SQLiteDatastore(path: path)
    }
    if url.hasPrefix("etcd://") {
        let hosts = url.dropFirst("etcd://".count).split(separator: ",").map { "http://\($0)" }
        guard !hosts.isEmpty else { throw DatastoreError.unavailable("\(url): name at least one etcd endpoint, e.g. etcd://127.0.0.1:2379") }
        return EtcdDatastore(endpoints: hosts)
    }
    throw DatastoreError.unavailable("datastore \"\(url)\" is not understood; use sqlite:///PATH or etcd://HOST:PORT[,HOST:PORT]")
}
