-- Dataset snapshots in the store (storage/datasets/ runs these blocks; `?` parameters, or the
-- Arrow tables it registers: assignment_rows(clustering_id, trajectory_id, cluster, distance),
-- snapshot_rows(dataset_id, row_idx, task_id, family, split, cluster, prompt, answer, trajectory_id)).

-- name: record_clustering
-- A clustering is shared by the snapshots that differ only after it (dedup, balance, hold out).
-- Anti joins rather than INSERT OR IGNORE: no primary key needed, so the shared store (DuckLake) runs it too.
INSERT INTO clusterings (clustering_id, method, params, n_clusters)
SELECT $1, $2, $3, $4 WHERE NOT EXISTS (FROM clusterings WHERE clustering_id = $1);

-- name: record_assignments
INSERT INTO cluster_assignments BY NAME
SELECT clustering_id, trajectory_id::UUID AS trajectory_id, cluster, distance FROM assignment_rows a
WHERE NOT EXISTS (FROM cluster_assignments c
                  WHERE c.clustering_id = a.clustering_id AND c.trajectory_id = a.trajectory_id::UUID);

-- name: record_dataset
INSERT INTO datasets (dataset_id, name, params, clustering_id, n_rows, export_path) VALUES (?, ?, ?, ?, ?, ?);

-- name: record_rows
INSERT INTO dataset_rows BY NAME
SELECT dataset_id, row_idx, trajectory_id::UUID AS trajectory_id, task_id, family, split, cluster, prompt, answer
FROM snapshot_rows;

-- name: find
SELECT dataset_id, params, export_path FROM datasets WHERE dataset_id = ?;

-- name: named
SELECT params, export_path FROM datasets WHERE name = ? ORDER BY created_at DESC, dataset_id;

-- name: ids_starting_with
SELECT dataset_id FROM datasets WHERE starts_with(dataset_id, ?) ORDER BY dataset_id;

-- name: rows
-- A snapshot's rows in row order, in the export's columns.
SELECT task_id, family, split, cluster, prompt, answer, trajectory_id::VARCHAR AS trajectory_id
FROM dataset_rows WHERE dataset_id = ? ORDER BY row_idx;

-- name: list
SELECT dataset_id, name, params->>'family' AS family, n_rows,
       (params->'counts'->>'train')::INTEGER AS n_train, (params->'counts'->>'test_id')::INTEGER AS n_test_id,
       (params->'counts'->>'test_ood')::INTEGER AS n_test_ood, created_at, export_path
FROM datasets ORDER BY created_at, dataset_id;

-- name: show
SELECT params, export_path, created_at FROM datasets WHERE dataset_id = ?;

-- name: cluster_sizes
SELECT split, cluster, rows_before, rows_after FROM dataset_cluster_sizes WHERE dataset_id = ?
ORDER BY split, cluster;
