from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_COSINE: _ClassVar[Metric]
    METRIC_INNER_PRODUCT: _ClassVar[Metric]
    METRIC_L2: _ClassVar[Metric]

class IndexKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INDEX_KIND_UNSPECIFIED: _ClassVar[IndexKind]
    INDEX_KIND_FLAT: _ClassVar[IndexKind]
    INDEX_KIND_HNSW: _ClassVar[IndexKind]
    INDEX_KIND_IVF_FLAT: _ClassVar[IndexKind]
    INDEX_KIND_IVF_PQ: _ClassVar[IndexKind]

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_DENSE: _ClassVar[SearchMode]
    SEARCH_MODE_SPARSE: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]

class Fusion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_UNSPECIFIED: _ClassVar[Fusion]
    FUSION_RRF: _ClassVar[Fusion]
    FUSION_WEIGHTED: _ClassVar[Fusion]
METRIC_UNSPECIFIED: Metric
METRIC_COSINE: Metric
METRIC_INNER_PRODUCT: Metric
METRIC_L2: Metric
INDEX_KIND_UNSPECIFIED: IndexKind
INDEX_KIND_FLAT: IndexKind
INDEX_KIND_HNSW: IndexKind
INDEX_KIND_IVF_FLAT: IndexKind
INDEX_KIND_IVF_PQ: IndexKind
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_DENSE: SearchMode
SEARCH_MODE_SPARSE: SearchMode
SEARCH_MODE_HYBRID: SearchMode
FUSION_UNSPECIFIED: Fusion
FUSION_RRF: Fusion
FUSION_WEIGHTED: Fusion

class IndexParams(_message.Message):
    __slots__ = ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nlist", "ivf_nprobe", "pq_m", "pq_bits", "rerank")
    HNSW_M_FIELD_NUMBER: _ClassVar[int]
    HNSW_EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    HNSW_EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    IVF_NLIST_FIELD_NUMBER: _ClassVar[int]
    IVF_NPROBE_FIELD_NUMBER: _ClassVar[int]
    PQ_M_FIELD_NUMBER: _ClassVar[int]
    PQ_BITS_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    ivf_nlist: int
    ivf_nprobe: int
    pq_m: int
    pq_bits: int
    rerank: int
    def __init__(self, hnsw_m: _Optional[int] = ..., hnsw_ef_construction: _Optional[int] = ..., hnsw_ef_search: _Optional[int] = ..., ivf_nlist: _Optional[int] = ..., ivf_nprobe: _Optional[int] = ..., pq_m: _Optional[int] = ..., pq_bits: _Optional[int] = ..., rerank: _Optional[int] = ...) -> None: ...

class MetadataValue(_message.Message):
    __slots__ = ("string_value", "int_value", "double_value", "bool_value", "list_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    int_value: int
    double_value: float
    bool_value: bool
    list_value: MetadataValueList
    def __init__(self, string_value: _Optional[str] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., bool_value: _Optional[bool] = ..., list_value: _Optional[_Union[MetadataValueList, _Mapping]] = ...) -> None: ...

class CreateIndexRequest(_message.Message):
    __slots__ = ("name", "model", "metric", "kind", "params", "store_text", "sparse", "multi_vector", "dense")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    STORE_TEXT_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    MULTI_VECTOR_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    metric: Metric
    kind: IndexKind
    params: IndexParams
    store_text: bool
    sparse: int
    multi_vector: int
    dense: bool
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., metric: _Optional[_Union[Metric, str]] = ..., kind: _Optional[_Union[IndexKind, str]] = ..., params: _Optional[_Union[IndexParams, _Mapping]] = ..., store_text: _Optional[bool] = ..., sparse: _Optional[int] = ..., multi_vector: _Optional[int] = ..., dense: _Optional[bool] = ...) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("name", "model", "model_source", "dimension", "metric", "kind", "params", "count", "trained", "status", "durable", "device", "store_text", "fingerprint", "binding", "fingerprint_parts", "sparse_dimension", "multi_vector_dimension", "representation_bytes")
    class FingerprintPartsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STORE_TEXT_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_PARTS_FIELD_NUMBER: _ClassVar[int]
    SPARSE_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MULTI_VECTOR_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATION_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    model_source: str
    dimension: int
    metric: Metric
    kind: IndexKind
    params: IndexParams
    count: int
    trained: bool
    status: str
    durable: bool
    device: str
    store_text: bool
    fingerprint: str
    binding: str
    fingerprint_parts: _containers.ScalarMap[str, str]
    sparse_dimension: int
    multi_vector_dimension: int
    representation_bytes: int
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., model_source: _Optional[str] = ..., dimension: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., kind: _Optional[_Union[IndexKind, str]] = ..., params: _Optional[_Union[IndexParams, _Mapping]] = ..., count: _Optional[int] = ..., trained: _Optional[bool] = ..., status: _Optional[str] = ..., durable: _Optional[bool] = ..., device: _Optional[str] = ..., store_text: _Optional[bool] = ..., fingerprint: _Optional[str] = ..., binding: _Optional[str] = ..., fingerprint_parts: _Optional[_Mapping[str, str]] = ..., sparse_dimension: _Optional[int] = ..., multi_vector_dimension: _Optional[int] = ..., representation_bytes: _Optional[int] = ...) -> None: ...

class DeleteIndexRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteIndexResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListIndexesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListIndexesResponse(_message.Message):
    __slots__ = ("indexes",)
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    indexes: _containers.RepeatedCompositeFieldContainer[IndexInfo]
    def __init__(self, indexes: _Optional[_Iterable[_Union[IndexInfo, _Mapping]]] = ...) -> None: ...

class DescribeIndexRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "text", "vector", "metadata", "sparse", "token_vectors")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetadataValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetadataValue, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_VECTORS_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    metadata: _containers.MessageMap[str, MetadataValue]
    sparse: SparseVector
    token_vectors: TokenVectors
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., metadata: _Optional[_Mapping[str, MetadataValue]] = ..., sparse: _Optional[_Union[SparseVector, _Mapping]] = ..., token_vectors: _Optional[_Union[TokenVectors, _Mapping]] = ...) -> None: ...

class SparseVector(_message.Message):
    __slots__ = ("ids", "values")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class TokenVectors(_message.Message):
    __slots__ = ("dimension", "values")
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    dimension: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, dimension: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class HybridOptions(_message.Message):
    __slots__ = ("fusion", "dense_weight", "sparse_weight", "rrf_k", "candidates")
    FUSION_FIELD_NUMBER: _ClassVar[int]
    DENSE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SPARSE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    fusion: Fusion
    dense_weight: float
    sparse_weight: float
    rrf_k: int
    candidates: int
    def __init__(self, fusion: _Optional[_Union[Fusion, str]] = ..., dense_weight: _Optional[float] = ..., sparse_weight: _Optional[float] = ..., rrf_k: _Optional[int] = ..., candidates: _Optional[int] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("index", "items", "fingerprint")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    index: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    fingerprint: str
    def __init__(self, index: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted", "count")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    count: int
    def __init__(self, upserted: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("index", "ids")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    index: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "count")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    count: int
    def __init__(self, deleted: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("index", "ids", "return_text")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    RETURN_TEXT_FIELD_NUMBER: _ClassVar[int]
    index: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    return_text: bool
    def __init__(self, index: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., return_text: _Optional[bool] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("items", "missing")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("index", "text", "vector", "k", "filter", "ef_search", "nprobe", "instruction", "where", "rerank", "return_text", "sparse", "token_vectors", "mode", "hybrid", "multi_vector_rerank")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetadataValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetadataValue, _Mapping]] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    RETURN_TEXT_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_VECTORS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HYBRID_FIELD_NUMBER: _ClassVar[int]
    MULTI_VECTOR_RERANK_FIELD_NUMBER: _ClassVar[int]
    index: str
    text: str
    vector: Vector
    k: int
    filter: _containers.MessageMap[str, MetadataValue]
    ef_search: int
    nprobe: int
    instruction: str
    where: Filter
    rerank: SearchRerank
    return_text: bool
    sparse: SparseVector
    token_vectors: TokenVectors
    mode: SearchMode
    hybrid: HybridOptions
    multi_vector_rerank: bool
    def __init__(self, index: _Optional[str] = ..., text: _Optional[str] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., k: _Optional[int] = ..., filter: _Optional[_Mapping[str, MetadataValue]] = ..., ef_search: _Optional[int] = ..., nprobe: _Optional[int] = ..., instruction: _Optional[str] = ..., where: _Optional[_Union[Filter, _Mapping]] = ..., rerank: _Optional[_Union[SearchRerank, _Mapping]] = ..., return_text: _Optional[bool] = ..., sparse: _Optional[_Union[SparseVector, _Mapping]] = ..., token_vectors: _Optional[_Union[TokenVectors, _Mapping]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., hybrid: _Optional[_Union[HybridOptions, _Mapping]] = ..., multi_vector_rerank: _Optional[bool] = ...) -> None: ...

class SearchRerank(_message.Message):
    __slots__ = ("model", "candidates", "instruction")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    candidates: int
    instruction: str
    def __init__(self, model: _Optional[str] = ..., candidates: _Optional[int] = ..., instruction: _Optional[str] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("field", "all", "any", "none")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    ANY_FIELD_NUMBER: _ClassVar[int]
    NONE_FIELD_NUMBER: _ClassVar[int]
    field: FieldCondition
    all: FilterList
    any: FilterList
    none: FilterList
    def __init__(self, field: _Optional[_Union[FieldCondition, _Mapping]] = ..., all: _Optional[_Union[FilterList, _Mapping]] = ..., any: _Optional[_Union[FilterList, _Mapping]] = ..., none: _Optional[_Union[FilterList, _Mapping]] = ...) -> None: ...

class FilterList(_message.Message):
    __slots__ = ("filters",)
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    def __init__(self, filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ...) -> None: ...

class FieldCondition(_message.Message):
    __slots__ = ("key", "eq", "ne", "not_in", "range", "exists")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EQ_FIELD_NUMBER: _ClassVar[int]
    NE_FIELD_NUMBER: _ClassVar[int]
    IN_FIELD_NUMBER: _ClassVar[int]
    NOT_IN_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    key: str
    eq: MetadataValue
    ne: MetadataValue
    not_in: MetadataValueList
    range: Range
    exists: bool
    def __init__(self, key: _Optional[str] = ..., eq: _Optional[_Union[MetadataValue, _Mapping]] = ..., ne: _Optional[_Union[MetadataValue, _Mapping]] = ..., not_in: _Optional[_Union[MetadataValueList, _Mapping]] = ..., range: _Optional[_Union[Range, _Mapping]] = ..., exists: _Optional[bool] = ..., **kwargs) -> None: ...

class MetadataValueList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[MetadataValue]
    def __init__(self, values: _Optional[_Iterable[_Union[MetadataValue, _Mapping]]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("gt", "gte", "lt", "lte", "gt_int", "gte_int", "lt_int", "lte_int")
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    GT_INT_FIELD_NUMBER: _ClassVar[int]
    GTE_INT_FIELD_NUMBER: _ClassVar[int]
    LT_INT_FIELD_NUMBER: _ClassVar[int]
    LTE_INT_FIELD_NUMBER: _ClassVar[int]
    gt: float
    gte: float
    lt: float
    lte: float
    gt_int: int
    gte_int: int
    lt_int: int
    lte_int: int
    def __init__(self, gt: _Optional[float] = ..., gte: _Optional[float] = ..., lt: _Optional[float] = ..., lte: _Optional[float] = ..., gt_int: _Optional[int] = ..., gte_int: _Optional[int] = ..., lt_int: _Optional[int] = ..., lte_int: _Optional[int] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("index", "texts", "vectors", "k", "filter", "where", "ef_search", "nprobe", "instruction", "rerank", "return_text", "sparse", "token_vectors", "mode", "hybrid", "multi_vector_rerank")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetadataValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetadataValue, _Mapping]] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    RETURN_TEXT_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_VECTORS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HYBRID_FIELD_NUMBER: _ClassVar[int]
    MULTI_VECTOR_RERANK_FIELD_NUMBER: _ClassVar[int]
    index: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    vectors: _containers.RepeatedCompositeFieldContainer[Vector]
    k: int
    filter: _containers.MessageMap[str, MetadataValue]
    where: Filter
    ef_search: int
    nprobe: int
    instruction: str
    rerank: SearchRerank
    return_text: bool
    sparse: _containers.RepeatedCompositeFieldContainer[SparseVector]
    token_vectors: _containers.RepeatedCompositeFieldContainer[TokenVectors]
    mode: SearchMode
    hybrid: HybridOptions
    multi_vector_rerank: bool
    def __init__(self, index: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., vectors: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., k: _Optional[int] = ..., filter: _Optional[_Mapping[str, MetadataValue]] = ..., where: _Optional[_Union[Filter, _Mapping]] = ..., ef_search: _Optional[int] = ..., nprobe: _Optional[int] = ..., instruction: _Optional[str] = ..., rerank: _Optional[_Union[SearchRerank, _Mapping]] = ..., return_text: _Optional[bool] = ..., sparse: _Optional[_Iterable[_Union[SparseVector, _Mapping]]] = ..., token_vectors: _Optional[_Iterable[_Union[TokenVectors, _Mapping]]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., hybrid: _Optional[_Union[HybridOptions, _Mapping]] = ..., multi_vector_rerank: _Optional[bool] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "metadata", "text", "rerank_score", "dense_score", "sparse_score", "maxsim_score")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetadataValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetadataValue, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RERANK_SCORE_FIELD_NUMBER: _ClassVar[int]
    DENSE_SCORE_FIELD_NUMBER: _ClassVar[int]
    SPARSE_SCORE_FIELD_NUMBER: _ClassVar[int]
    MAXSIM_SCORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    metadata: _containers.MessageMap[str, MetadataValue]
    text: str
    rerank_score: float
    dense_score: float
    sparse_score: float
    maxsim_score: float
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., metadata: _Optional[_Mapping[str, MetadataValue]] = ..., text: _Optional[str] = ..., rerank_score: _Optional[float] = ..., dense_score: _Optional[float] = ..., sparse_score: _Optional[float] = ..., maxsim_score: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: str
    def __init__(self, index: _Optional[str] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class ListIdsRequest(_message.Message):
    __slots__ = ("index", "page_size", "page_token")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    index: str
    page_size: int
    page_token: str
    def __init__(self, index: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListIdsResponse(_message.Message):
    __slots__ = ("ids", "next_page_token", "count")
    IDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    count: int
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class RebindRequest(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: str
    def __init__(self, index: _Optional[str] = ...) -> None: ...

class ReembedRequest(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: str
    def __init__(self, index: _Optional[str] = ...) -> None: ...

class ReembedResponse(_message.Message):
    __slots__ = ("reembedded", "fingerprint", "rounds")
    REEMBEDDED_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    reembedded: int
    fingerprint: str
    rounds: int
    def __init__(self, reembedded: _Optional[int] = ..., fingerprint: _Optional[str] = ..., rounds: _Optional[int] = ...) -> None: ...
