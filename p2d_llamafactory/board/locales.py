"""Labels and help of the P2D accordion, in every language of LLaMA-Board (en, ru, zh, ko, ja).

``LOCALES`` has LLaMA-Board's shape (element name -> language -> gradio properties); ``ALERTS`` holds the
messages shown for invalid values.
"""


def _texts(**by_language: tuple[str, str]) -> dict[str, dict[str, str]]:
    return {lang: {"label": label, "info": info} for lang, (label, info) in by_language.items()}


LOCALES: dict[str, dict[str, dict[str, str]]] = {
    "p2d_tab": {
        "en": {"label": "P2D configurations (head identification, data selection, sparse head adaptation)"},
        "ru": {"label": "Конфигурации P2D (поиск голов, отбор данных, разреженная адаптация голов)"},
        "zh": {"label": "P2D 参数设置（注意力头识别、数据筛选、稀疏头微调）"},
        "ko": {"label": "P2D 구성 (헤드 식별, 데이터 선택, 희소 헤드 적응)"},
        "ja": {"label": "P2D 設定（ヘッド特定、データ選択、スパースヘッド適応）"},
    },
    "p2d_head_ratio": _texts(
        en=("Head ratio", "Fraction of all attention heads to select and train (ρ_P), in (0, 1]."),
        ru=("Доля голов", "Доля всех голов внимания для отбора и обучения (ρ_P), в (0, 1]."),
        zh=("注意力头比例", "选择并训练的注意力头占全部注意力头的比例（ρ_P），取值 (0, 1]。"),
        ko=("헤드 비율", "선택하여 학습할 어텐션 헤드의 비율 (ρ_P), (0, 1] 범위."),
        ja=("ヘッド比率", "選択して学習するアテンションヘッドの割合（ρ_P）、(0, 1] の範囲。"),
    ),
    "p2d_head_modules": _texts(
        en=("Head modules", "Per-head slices that train: q (query rows), k, v (key/value rows), o (output columns)."),
        ru=("Модули голов", "Обучаемые срезы головы: q (строки query), k, v (строки key/value), o (столбцы output)."),
        zh=("头模块", "每个注意力头参与训练的切片：q（query 行）、k、v（key/value 行）、o（输出列）。"),
        ko=("헤드 모듈", "학습할 헤드별 슬라이스: q (query 행), k, v (key/value 행), o (출력 열)."),
        ja=("ヘッドモジュール", "学習するヘッドごとのスライス：q（query 行）、k、v（key/value 行）、o（出力列）。"),
    ),
    "p2d_head_selection": _texts(
        en=(
            "Head selection method",
            "w1: Wasserstein-1 between base and proxy (the paper's); random; cosine; gradient.",
        ),
        ru=(
            "Метод выбора голов",
            "w1: расстояние Вассерштейна-1 между базой и прокси (из статьи); random; cosine; gradient.",
        ),
        zh=("注意力头选择方法", "w1：基座与代理模型之间的 Wasserstein-1 距离（论文方法）；random；cosine；gradient。"),
        ko=("헤드 선택 방법", "w1: 기본 모델과 프록시 간 Wasserstein-1 거리 (논문 방식); random; cosine; gradient."),
        ja=("ヘッド選択方法", "w1：ベースとプロキシ間の Wasserstein-1 距離（論文の手法）；random；cosine；gradient。"),
    ),
    "p2d_fhi_samples": _texts(
        en=("FHI samples", "Training examples of the fast head identification proxy (paper: 100)."),
        ru=("Примеры FHI", "Обучающие примеры прокси быстрой идентификации голов (в статье: 100)."),
        zh=("FHI 样本数", "快速注意力头识别代理模型使用的训练样本数（论文：100）。"),
        ko=("FHI 샘플 수", "빠른 헤드 식별 프록시의 학습 예제 수 (논문: 100)."),
        ja=("FHI サンプル数", "高速ヘッド特定プロキシの学習例の数（論文：100）。"),
    ),
    "p2d_fhi_steps": _texts(
        en=("FHI steps", "Full-batch steps of the proxy (paper: 20)."),
        ru=("Шаги FHI", "Полнобатчевые шаги прокси (в статье: 20)."),
        zh=("FHI 步数", "代理模型的全批次训练步数（论文：20）。"),
        ko=("FHI 스텝 수", "프록시의 전체 배치 스텝 수 (논문: 20)."),
        ja=("FHI ステップ数", "プロキシのフルバッチステップ数（論文：20）。"),
    ),
    "p2d_head_lr_scale": _texts(
        en=("Head LR scale", "The head slices train at learning rate × this (default 10; 1: the rate as given)."),
        ru=(
            "Масштаб LR голов",
            "Срезы голов обучаются со скоростью learning rate × это (по умолчанию 10; 1: как задано).",
        ),
        zh=("注意力头学习率倍数", "注意力头切片的学习率为 learning rate × 此值（默认 10；1：按原值）。"),
        ko=("헤드 학습률 배수", "헤드 슬라이스는 learning rate × 이 값으로 학습합니다 (기본 10; 1: 그대로)."),
        ja=("ヘッド学習率倍率", "ヘッドスライスは learning rate × この値で学習します（既定 10；1：そのまま）。"),
    ),
    "p2d_heads_file": _texts(
        en=("Heads file", "Optional: reuse the head set of a p2d_heads.json instead of identifying heads."),
        ru=("Файл голов", "Необязательно: использовать набор голов из p2d_heads.json вместо их поиска."),
        zh=("注意力头文件", "可选：复用 p2d_heads.json 中的注意力头集合，跳过头识别。"),
        ko=("헤드 파일", "선택: 헤드를 식별하는 대신 p2d_heads.json의 헤드 집합을 재사용합니다."),
        ja=("ヘッドファイル", "任意：ヘッド特定の代わりに p2d_heads.json のヘッド集合を再利用します。"),
    ),
    "p2d_data_selection": _texts(
        en=(
            "Data selection method",
            "Select training data first (any method): p2d, data_whisperer, ifd, random, none.",
        ),
        ru=(
            "Метод отбора данных",
            "Сначала отобрать обучающие данные (любой метод): p2d, data_whisperer, ifd, random, none.",
        ),
        zh=("数据筛选方法", "训练前先筛选数据（适用于任意微调方法）：p2d、data_whisperer、ifd、random、none。"),
        ko=("데이터 선택 방법", "먼저 학습 데이터를 선택 (모든 방법에 적용): p2d, data_whisperer, ifd, random, none."),
        ja=("データ選択方法", "学習前にデータを選択（どの手法にも適用）：p2d、data_whisperer、ifd、random、none。"),
    ),
    "p2d_data_ratio": _texts(
        en=("Data ratio", "Fraction of the training examples kept by data selection (ρ_D), in (0, 1]."),
        ru=("Доля данных", "Доля обучающих примеров, оставляемая отбором данных (ρ_D), в (0, 1]."),
        zh=("数据比例", "数据筛选保留的训练样本比例（ρ_D），取值 (0, 1]。"),
        ko=("데이터 비율", "데이터 선택이 유지할 학습 예제의 비율 (ρ_D), (0, 1] 범위."),
        ja=("データ比率", "データ選択で残す学習例の割合（ρ_D）、(0, 1] の範囲。"),
    ),
    "p2d_icl_scoring": _texts(
        en=(
            "ICL scoring mode",
            "generate: decode and score the answers (the paper's); teacher_forced: one pass, no decoding.",
        ),
        ru=(
            "Режим оценки ICL",
            "generate: генерировать и оценивать ответы (из статьи); teacher_forced: один проход без генерации.",
        ),
        zh=("ICL 打分模式", "generate：生成答案并打分（论文方法）；teacher_forced：单次前向，无需解码。"),
        ko=("ICL 채점 모드", "generate: 답을 생성해 채점 (논문 방식); teacher_forced: 디코딩 없이 한 번의 순전파."),
        ja=(
            "ICL 採点モード",
            "generate：回答を生成して採点（論文の手法）；teacher_forced：デコードなしの一回の順伝播。",
        ),
    ),
    "p2d_icl_instruction": _texts(
        en=(
            "ICL instruction",
            "Task instruction of the probe prompts: math, summarization, biomedical, general, or your own text.",
        ),
        ru=(
            "Инструкция ICL",
            "Инструкция задачи в пробных промптах: math, summarization, biomedical, general или свой текст.",
        ),
        zh=("ICL 指令", "探测提示中的任务指令：math、summarization、biomedical、general 或自定义文本。"),
        ko=("ICL 지시문", "프로브 프롬프트의 작업 지시문: math, summarization, biomedical, general 또는 직접 입력."),
        ja=("ICL 指示", "プローブプロンプトのタスク指示：math、summarization、biomedical、general、または任意の文。"),
    ),
    "p2d_aer_estimate_steps": _texts(
        en=("AER estimate steps", "Time this many full fine-tuning steps to estimate the AER; 0: off."),
        ru=("Шаги оценки AER", "Засечь столько шагов полного дообучения для оценки AER; 0: выкл."),
        zh=("AER 估计步数", "计时若干步全参数微调以估计 AER；0 表示关闭。"),
        ko=("AER 추정 스텝", "AER 추정을 위해 전체 파인튜닝 스텝을 이만큼 측정합니다; 0: 끄기."),
        ja=("AER 推定ステップ数", "AER を推定するためにフル微調整をこのステップ数だけ計測します。0：オフ。"),
    ),
}

ALERTS: dict[str, dict[str, str]] = {
    "err_p2d_invalid": {
        "en": "Invalid P2D setting: ",
        "ru": "Недопустимый параметр P2D: ",
        "zh": "P2D 参数无效：",
        "ko": "잘못된 P2D 설정: ",
        "ja": "無効な P2D 設定：",
    },
    "err_p2d_heads_file": {
        "en": "P2D heads file not found: ",
        "ru": "Файл голов P2D не найден: ",
        "zh": "未找到 P2D 注意力头文件：",
        "ko": "P2D 헤드 파일을 찾을 수 없습니다: ",
        "ja": "P2D ヘッドファイルが見つかりません：",
    },
}
